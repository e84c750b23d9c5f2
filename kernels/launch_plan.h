// What the CUDA launchers decide on the host, as plain functions with no CUDA runtime call, so
// that the CPU test suite (tests/test_launch_plan.cpp) covers every input; the CUDA launchers call
// exactly these. The dtype rule is public (fusedkd/dtype.h: cuda_kernel_dtypes), the ops use it too.
#pragma once

#include <cstdint>

#include "fusedkd/config.h"

namespace fusedkd::detail {

// Chunks of `width` elements that a row of `cols` elements spans when its first element lies
// `head` elements into a chunk (0 <= head < width). 64-bit: rows near 2^31 elements do not wrap.
FUSEDKD_HD constexpr std::int64_t chunk_count(std::int64_t cols, int head, int width) {
  return (cols + head + width - 1) / width;
}

// The same at the worst head (width - 1): what a block must be able to hold for any alignment.
FUSEDKD_HD constexpr std::int64_t max_chunks_per_row(std::int64_t cols, int width) {
  return chunk_count(cols, width - 1, width);
}

// The register tile a row of `cols` elements gets in chunks of `width` (the softmax and
// soft-target row kernels): `threads` per row (a sub-warp, a warp or a block), `block` threads per
// block, `items` chunks per thread (elements_per_thread / width for rows beyond one chunk per
// thread). The smallest that holds the row, blocks up to `max_block` threads; {0, 0, 0} when none
// does (the row goes to the on-chip or streaming kernels).
struct RegisterTile {
  int threads = 0, block = 0, items = 0;
  bool fits() const { return threads > 0; }
};
RegisterTile register_tile(std::int64_t cols, int width, int elements_per_thread, int max_block);

// Blocks for a kernel that strides over `work_items` items, `items_per_block` per block: enough
// for every item, at most four waves of `block_threads`-thread blocks on `multiprocessors` SMs
// (2048 resident threads each; the kernels loop over the rest), at least 1.
unsigned int grid_blocks(std::int64_t work_items, int items_per_block, int block_threads, int multiprocessors);

// The most blocks one row may be split over (a thread-block cluster, 16 at most): clusters need an
// sm_90 device *and* a kernel whose code was compiled for sm_90 or later (its PTX and binary
// versions from cudaFuncAttributes, 10 * major + minor). A build for sm_80 alone run on an H100 has
// kernels without the cluster code (they would treat each block as a whole row): 1 for those.
int max_cluster_blocks(int device_major, int kernel_ptx_version, int kernel_binary_version);

// What the on-chip planner does when an occupancy query for a cluster size fails. An error that
// was pending before the query (an earlier launch's, say) is not the query's to clear: it is
// reported. Otherwise the failure means this cluster size cannot run here, the query's own error
// is cleared and the next size is tried.
enum class QueryFailure { ReportPendingError, TryNextSize };
QueryFailure on_occupancy_query_failure(bool error_was_pending);

}  // namespace fusedkd::detail

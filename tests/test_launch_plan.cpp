// The CUDA launchers' host decisions, tested on the CPU over their whole input space: the dtype
// rule (every pair), the chunk arithmetic (rows up to and beyond 2^31 elements), cluster
// eligibility from the compiled kernel's versions, and what a failed occupancy query does with an
// error that was pending before it. The CUDA launchers call exactly these functions. Also the
// CPU kernels' spread row order (cpu/cpu_kernels.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "fusedkd/dtype.h"
#include "fusedkd/soft_target.h"
#include "cpu/cpu_kernels.h"
#include "launch_plan.h"

namespace {

using fusedkd::DType;

const std::vector<DType> kAll = {DType::Float32, DType::Float64, DType::Float16, DType::BFloat16};

// Whether every value of `from` is a value of `to` (so converting loses nothing).
bool holds_exactly(DType to, DType from) {
  if (to == from || to == DType::Float64) return true;
  return to == DType::Float32 && from != DType::Float64;
}

TEST(CudaDtypeRule, EveryPairIsPromotedNeverDemoted) {
  for (const DType s : kAll)
    for (const DType t : kAll) {
      const std::string what = std::string(fusedkd::dtype_name(s)) + "/" + fusedkd::dtype_name(t);
      const fusedkd::DTypePair used = fusedkd::cuda_kernel_dtypes(s, t);
      EXPECT_TRUE(fusedkd::cuda_kernels_take(used.student, used.teacher)) << what;
      EXPECT_TRUE(holds_exactly(used.student, s)) << what;
      EXPECT_TRUE(holds_exactly(used.teacher, t)) << what;
      EXPECT_EQ(fusedkd::loss_dtype(used.student, used.teacher), fusedkd::loss_dtype(s, t)) << what;
      if (fusedkd::cuda_kernels_take(s, t)) {
        EXPECT_EQ(used.student, s) << what;  // a pair the kernels take is never converted
        EXPECT_EQ(used.teacher, t) << what;
      }
    }
  // The cases the review found: a float64 teacher keeps float64, a 16-bit mix reads the teacher in
  // float32.
  EXPECT_EQ(fusedkd::cuda_kernel_dtypes(DType::Float32, DType::Float64).student, DType::Float64);
  EXPECT_EQ(fusedkd::cuda_kernel_dtypes(DType::BFloat16, DType::Float64).teacher, DType::Float64);
  EXPECT_EQ(fusedkd::cuda_kernel_dtypes(DType::Float16, DType::BFloat16).teacher, DType::Float32);
  EXPECT_EQ(fusedkd::cuda_kernel_dtypes(DType::Float16, DType::BFloat16).student, DType::Float16);
  EXPECT_EQ(fusedkd::loss_dtype(DType::Float16, DType::BFloat16), DType::Float32);
  EXPECT_EQ(fusedkd::loss_dtype(DType::Float16, DType::Float64), DType::Float64);
}

TEST(ChunkArithmetic, ExactUpToAndBeyondTwoToThe31) {
  const std::int64_t max_int = std::numeric_limits<std::int32_t>::max();
  for (const int width : {1, 2, 4, 8, 16})
    for (const std::int64_t cols : {std::int64_t{1}, std::int64_t{7}, std::int64_t{4096}, max_int - 1, max_int,
                                    max_int + 1, std::int64_t{1} << 33})
      for (int head = 0; head < width; ++head) {
        const std::int64_t chunks = fusedkd::detail::chunk_count(cols, head, width);
        // Every element of [head, head + cols) is in one of the chunks, and the last one is needed.
        EXPECT_GE(chunks * width, cols + head) << cols << " " << head << " " << width;
        EXPECT_LT((chunks - 1) * width, cols + head) << cols << " " << head << " " << width;
        EXPECT_LE(chunks, fusedkd::detail::max_chunks_per_row(cols, width));
      }
  // The 32-bit expression this replaces wrapped to a negative count here.
  EXPECT_EQ(fusedkd::detail::chunk_count(max_int, 7, 8), (max_int + 7 + 7) / 8);
  EXPECT_GT(fusedkd::detail::chunk_count(max_int, 7, 8), 0);
}

// The register tiles: the smallest that holds the row, and the documented boundaries (float32:
// rows up to 4093 elements in registers with 256-thread blocks; docs/architecture.md).
TEST(RegisterTiles, SmallestThatHoldsTheRowUpToTheLargestBlock) {
  using fusedkd::detail::register_tile;
  for (const int width : {2, 4, 8}) {
    const int items = 16 / width;
    for (std::int64_t cols = 1; cols <= 9000; cols += (cols < 300 ? 1 : 37)) {
      const auto tile = register_tile(cols, width, 16, 256);
      const std::int64_t chunks = fusedkd::detail::max_chunks_per_row(cols, width);
      if (!tile.fits()) {
        EXPECT_GT(chunks, 256 * items) << cols << " " << width;
        continue;
      }
      EXPECT_GE(static_cast<std::int64_t>(tile.threads) * tile.items, chunks) << cols << " " << width;
      EXPECT_LE(tile.block, 256);
      EXPECT_EQ(tile.block % tile.threads, 0);
      EXPECT_TRUE(tile.items == 1 || tile.items == items);
    }
  }
  EXPECT_EQ(register_tile(1, 4, 16, 256).threads, 4);
  // float32 (width 4, 4 chunks a thread): 4093 elements is the largest row a 256-thread tile holds
  // at any alignment; 4096 may start 3 elements into a chunk and span 1025 chunks.
  EXPECT_EQ(register_tile(4093, 4, 16, 256).threads, 256);
  EXPECT_FALSE(register_tile(4094, 4, 16, 256).fits());
  EXPECT_EQ(register_tile(4096, 4, 16, 512).threads, 512);
  EXPECT_EQ(register_tile(4089, 8, 16, 256).threads, 256);  // bf16 pairs (width 8, 2 chunks a thread)
  EXPECT_FALSE(register_tile(4090, 8, 16, 256).fits());
  EXPECT_FALSE(register_tile(std::int64_t{1} << 40, 4, 16, 1024).fits());  // no narrowing to int
}

TEST(GridBlocks, EveryItemCoveredWithinFourWaves) {
  using fusedkd::detail::grid_blocks;
  EXPECT_EQ(grid_blocks(0, 1, 256, 132), 1u);
  EXPECT_EQ(grid_blocks(1000, 4, 128, 132), 250u);
  EXPECT_EQ(grid_blocks(std::int64_t{1} << 40, 1, 256, 132), 132u * 8 * 4);  // capped, no wrap
  EXPECT_EQ(grid_blocks(std::int64_t{1} << 40, 1, 1024, 132), 132u * 2 * 4);
}

TEST(ClusterEligibility, NeedsTheDeviceAndTheKernelsCode) {
  EXPECT_EQ(fusedkd::detail::max_cluster_blocks(9, 90, 90), 16);
  EXPECT_EQ(fusedkd::detail::max_cluster_blocks(10, 100, 100), 16);
  EXPECT_EQ(fusedkd::detail::max_cluster_blocks(8, 80, 80), 1);
  // A build for sm_80 alone on an H100/H200: PTX for compute_80, JIT-compiled to sm_90.
  EXPECT_EQ(fusedkd::detail::max_cluster_blocks(9, 80, 90), 1);
  EXPECT_EQ(fusedkd::detail::max_cluster_blocks(9, 80, 80), 1);
  EXPECT_EQ(fusedkd::detail::max_cluster_blocks(8, 90, 90), 1);  // cannot happen, but no clusters either
}

TEST(OccupancyQueryFailure, AnEarlierErrorIsReportedNotCleared) {
  using fusedkd::detail::QueryFailure;
  EXPECT_EQ(fusedkd::detail::on_occupancy_query_failure(true), QueryFailure::ReportPendingError);
  EXPECT_EQ(fusedkd::detail::on_occupancy_query_failure(false), QueryFailure::TryNextSize);
}

// run_rows_spread: every row exactly once, whatever the executor's split, and each half of the
// virtual range (two threads' shares) holds rows from both halves of [0, rows).
TEST(CpuSpreadRows, CoverEveryRowOnceAndMixTheThreadsShares) {
  for (const std::int64_t rows : {1, 5, 37, 1000, 4097})
    for (const std::int64_t block : {1, 7, 64, 5000})
      for (const std::int64_t task : {1, 3, 500}) {
        std::vector<int> seen(static_cast<std::size_t>(rows), 0);
        std::vector<std::int64_t> first_half;  // rows the first half of the virtual range ran
        fusedkd::CpuExecutor executor;
        executor.parallel_for = [&](std::int64_t n, std::int64_t, const fusedkd::CpuExecutor::Body& body) {
          for (std::int64_t b = 0; b < n; b += task) body(b, std::min(n, b + task));
        };
        std::int64_t virtual_row = 0;
        fusedkd::cpu::run_rows_spread(executor, rows, 1, block, [&](std::int64_t begin, std::int64_t end) {
          ASSERT_LE(0, begin);
          ASSERT_LE(end, rows);
          for (std::int64_t r = begin; r < end; ++r, ++virtual_row) {
            ++seen[static_cast<std::size_t>(r)];
            if (virtual_row < rows / 2) first_half.push_back(r);
          }
        });
        for (std::int64_t r = 0; r < rows; ++r) ASSERT_EQ(seen[static_cast<std::size_t>(r)], 1) << r;
        if (rows >= 1000 && block <= 64) {
          const auto late =
              std::count_if(first_half.begin(), first_half.end(), [&](std::int64_t r) { return r >= rows / 2; });
          const double share = static_cast<double>(late) / static_cast<double>(first_half.size());
          EXPECT_GT(share, 0.3) << rows << " rows, blocks of " << block;
          EXPECT_LT(share, 0.7) << rows << " rows, blocks of " << block;
        }
      }
}

}  // namespace

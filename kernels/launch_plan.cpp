#include "launch_plan.h"

#include "fusedkd/dtype.h"
#include "fusedkd/soft_target.h"

namespace fusedkd {

bool cuda_kernels_take(DType student, DType teacher) {
  if (student == teacher) return true;
  // One of the two float32, the other 16-bit: the pairs mixed-precision training produces.
  const bool one_float32 = (student == DType::Float32) != (teacher == DType::Float32);
  const bool no_double = student != DType::Float64 && teacher != DType::Float64;
  return one_float32 && no_double;
}

DTypePair cuda_kernel_dtypes(DType student, DType teacher) {
  if (cuda_kernels_take(student, teacher)) return {student, teacher};
  // Promote, never demote: float64 on either side runs in float64; a float16/bfloat16 mix keeps
  // the student and reads the teacher as float32 (both 16-bit types convert to it exactly).
  if (student == DType::Float64 || teacher == DType::Float64) return {DType::Float64, DType::Float64};
  return {student, DType::Float32};
}

DType loss_dtype(DType student, DType teacher) {
  return student == DType::Float64 || teacher == DType::Float64 ? DType::Float64 : DType::Float32;
}

namespace detail {

RegisterTile register_tile(std::int64_t cols, int width, int elements_per_thread, int max_block) {
  const int items = elements_per_thread / width;
  const std::int64_t chunks = max_chunks_per_row(cols, width);
  // A sub-warp or a warp per row (several rows per 128-thread block), one chunk per thread.
  for (const int threads : {4, 8, 16, 32})
    if (chunks <= threads) return {threads, 128, 1};
  if (chunks <= 32 * items) return {32, 128, items};
  // A block per row.
  for (const int threads : {128, 256, 512, 1024})
    if (threads <= max_block && chunks <= static_cast<std::int64_t>(threads) * items)
      return {threads, threads, items};
  return {};
}

unsigned int grid_blocks(std::int64_t work_items, int items_per_block, int block_threads, int multiprocessors) {
  const std::int64_t needed = (work_items + items_per_block - 1) / items_per_block;
  const std::int64_t cap = static_cast<std::int64_t>(multiprocessors) * (2048 / block_threads) * 4;
  const std::int64_t blocks = needed < cap ? needed : cap;
  return static_cast<unsigned int>(blocks < 1 ? 1 : blocks);
}

int max_cluster_blocks(int device_major, int kernel_ptx_version, int kernel_binary_version) {
  return device_major >= 9 && kernel_ptx_version >= 90 && kernel_binary_version >= 90 ? 16 : 1;
}

QueryFailure on_occupancy_query_failure(bool error_was_pending) {
  return error_was_pending ? QueryFailure::ReportPendingError : QueryFailure::TryNextSize;
}

}  // namespace detail
}  // namespace fusedkd

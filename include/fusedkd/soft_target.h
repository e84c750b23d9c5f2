// The fused soft-target losses (kl_div, jsd, soft_mse, kd_loss): one launcher for all of them.
// One pass over each student/teacher row computes the row's divergence at temperature T, the
// hard cross-entropy at temperature 1 when asked, and (when asked) the gradients, already scaled
// as if grad_output were 1. Math: docs/math.md.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fusedkd/cpu_executor.h"
#include "fusedkd/dtype.h"

struct CUstream_st;

namespace fusedkd {

// Generalized JSD with beta = 0 or 1 is passed as ForwardKL / ReverseKL (the spec's definition).
enum class Divergence : std::int8_t { ForwardKL, ReverseKL, JSD, MSE };

struct SoftTargetArgs {
  const void* student = nullptr;  // [rows, cols], rows `student_row_stride` apart
  DType student_dtype = DType::Float32;
  std::int64_t student_row_stride = 0;
  const void* teacher = nullptr;
  DType teacher_dtype = DType::Float32;
  std::int64_t teacher_row_stride = 0;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  double temperature = 1.0;
  Divergence divergence = Divergence::ForwardKL;
  double beta = 0.5;  // JSD only, 0 < beta < 1

  // Hard cross-entropy (temperature 1) over `labels` (int64 [rows], contiguous), or none.
  // Rows whose label equals ignore_index are not valid: they add nothing to any sum or gradient.
  // With labels and divide_by_valid_rows, the divisor n is the number of valid rows.
  const std::int64_t* labels = nullptr;
  std::int64_t ignore_index = -100;

  // Row r contributes soft_scale * D_r + hard_scale * CE_r; the total is the sum over valid rows,
  // divided by n (the valid rows; `rows` without labels) when divide_by_valid_rows is set.
  double soft_scale = 1.0;
  double hard_scale = 0.0;
  bool divide_by_valid_rows = true;

  // Outputs. per_row_loss: `loss` holds soft_scale * D_r for each row (accumulation dtype, [rows]);
  // else `loss` holds the total (one element). Loss dtype: float64 when an input is float64, else
  // float32. The gradients (contiguous, in fusedkd/dtype.h's gradient_dtype of their input's dtype
  // and float16_gradients_in_float32) are written when non-null; they must not overlap the inputs
  // (the CPU kernel reads rows stored in the accumulation dtype where they lie while it writes the
  // gradients).
  bool per_row_loss = false;
  void* loss = nullptr;
  void* grad_student = nullptr;
  void* grad_teacher = nullptr;
  // A float16 input's gradient written in float32 (the CPU launcher; the CUDA launcher rejects it).
  // The torch ops keep a float16 input's gradient in float32 until it is scaled by grad_output
  // (torch_ext/autograd.h); with this the CPU kernel reads the float16 logits themselves instead
  // of a float32 copy made for the gradient's sake.
  bool float16_gradients_in_float32 = false;

  // Scratch the launcher needs: soft_target_workspace_bytes(args) bytes (host memory for the CPU
  // launcher, device memory for the CUDA one).
  void* workspace = nullptr;
};

std::size_t soft_target_workspace_bytes(const SoftTargetArgs& args);

// True when the loss is computed in float64 (an input is float64).
bool soft_target_uses_double(const SoftTargetArgs& args);

// Throw std::invalid_argument for arguments no kernel can run with. The CPU launcher also throws
// for a label outside [0, cols) that is not ignore_index; the CUDA launcher cannot check without
// a host synchronisation and makes the loss (and that row's gradient) NaN instead. The CUDA
// launcher takes the dtype pairs cuda_kernels_take (fusedkd/dtype.h) accepts.
void soft_target_loss_cpu(const SoftTargetArgs& args, const CpuExecutor& executor = {});
void soft_target_loss_cuda(const SoftTargetArgs& args, CUstream_st* stream);

namespace detail {

// How the CUDA launcher runs one row, for tests and benchmarks that compare the regimes
// (docs/architecture.md): in a register tile (rows up to 4093 float32 elements), on chip (the row's
// slice held in the shared memory of each of `blocks_per_row` blocks, a thread-block cluster when
// more than one; sm_90 and later), or streaming (two sweeps over device memory for KL, three
// for JSD and soft MSE).
struct CudaRowPlan {
  enum class Kind { RegisterTile, OnChip, Streaming };
  Kind kind = Kind::RegisterTile;
  int blocks_per_row = 1;
};
// The plan for rows of `cols` elements of these dtypes on the current device, under the policy.
CudaRowPlan soft_target_cuda_row_plan(DType student, DType teacher, std::int64_t cols);

// Rows beyond the register tiles: the default ({false, 1}) keeps a row on chip in the fewest
// blocks that hold it, and streams it otherwise. `streaming_only` forces the streaming kernel;
// `min_blocks_per_row` splits on-chip rows over at least that many blocks (a cluster), to
// exercise the cluster path with short rows; `fail_cluster_queries` makes every cluster occupancy
// query report a failure, to test the planner's error handling. Process-wide; set it only while
// no soft-target kernel is being launched.
struct CudaLongRowPolicy {
  bool streaming_only = false;
  int min_blocks_per_row = 1;
  bool fail_cluster_queries = false;
};
void set_cuda_long_row_policy(const CudaLongRowPolicy& policy);
CudaLongRowPolicy cuda_long_row_policy();

}  // namespace detail

}  // namespace fusedkd

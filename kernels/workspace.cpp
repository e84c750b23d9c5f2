// The workspace sizes of every launcher, and which launchers compute in float64 (the loss dtype
// rule, fusedkd/dtype.h: loss_dtype, applied to each launcher's arguments).
#include "workspace.h"

#include <algorithm>

#include "cpu/cpu_kernels.h"
#include "fusedkd/feature.h"
#include "fusedkd/soft_target.h"
#include "projection.h"

namespace fusedkd {

bool soft_target_uses_double(const SoftTargetArgs& a) {
  return loss_dtype(a.student_dtype, a.teacher_dtype) == DType::Float64;
}

bool feature_mse_uses_double(const FeatureMseArgs& a) {
  return loss_dtype(a.student_dtype, a.teacher_dtype) == DType::Float64;
}

// Per-block (CUDA) or per-chunk (CPU) partial sums, in double.
std::size_t feature_mse_workspace_bytes(const FeatureMseArgs& a) {
  if (a.elementwise_loss) return 0;
  return static_cast<std::size_t>(std::max(cpu::task_count(a.numel), detail::kFeatureMaxBlocks)) * 8;
}

bool attention_transfer_uses_double(const AttentionTransferArgs& a) {
  return loss_dtype(a.student.dtype, a.teacher.dtype) == DType::Float64;
}

// The attention maps [N, S] as normalised rows.
std::size_t attention_transfer_workspace_bytes(const AttentionTransferArgs& a) {
  return attention_transfer_uses_double(a) ? detail::NormalizedRowsWorkspace<double>::bytes(a.batch, a.spatial)
                                           : detail::NormalizedRowsWorkspace<float>::bytes(a.batch, a.spatial);
}

// The Gram matrices [N, N] as normalised rows.
std::size_t similarity_preserving_workspace_bytes(const SimilarityPreservingArgs& a) {
  return a.is_double ? detail::NormalizedRowsWorkspace<double>::bytes(a.rows, a.rows)
                     : detail::NormalizedRowsWorkspace<float>::bytes(a.rows, a.rows);
}

std::size_t projected_feature_mse_workspace_bytes(const ProjectedFeatureMseArgs& a) {
  return feature_mse_workspace_bytes(detail::projection_error_args(a));
}

// Row losses (accumulation type), then the weight of a valid row (detail::soft_target_weight_offset).
std::size_t soft_target_workspace_bytes(const SoftTargetArgs& a) {
  const std::size_t acc = soft_target_uses_double(a) ? 8 : 4;
  return detail::soft_target_weight_offset(a.rows, acc) + acc;
}

}  // namespace fusedkd

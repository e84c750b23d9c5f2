// Argument checks shared by the CPU and CUDA launchers (the ops check first, with their own
// messages; these guard the raw kernel API).
#pragma once

#include "fusedkd/feature.h"
#include "fusedkd/soft_target.h"
#include "fusedkd/softmax.h"

namespace fusedkd::detail {

void validate(const SoftmaxForwardArgs& args);
void validate(const SoftmaxBackwardArgs& args);
void validate(const SoftTargetArgs& args);
void validate(const ScaleRowsArgs& args);
// Every label is ignore_index or in [0, cols) (reads labels on the host).
void validate_labels_on_host(const SoftTargetArgs& args);

void validate(const FeatureMseArgs& args);
void validate(const ScaleElementsArgs& args);
void validate(const AttentionTransferArgs& args);
void validate(const SimilarityPreservingArgs& args);
void validate(const ProjectedFeatureMseArgs& args);
void validate(const ProjectionBackwardArgs& args);

// `value` as a 32-bit BLAS dimension; std::invalid_argument naming `what` when it does not fit.
int blas_int(std::int64_t value, const char* what);

// One factor per run of factor_group elements (neither one factor for all nor one per element)
// is the per-row scaling of scale_rows_*; as_rows gives those rows.
bool scales_by_rows(const ScaleElementsArgs& args);
ScaleRowsArgs as_rows(const ScaleElementsArgs& args);

// The squared-error pass of projected_feature_mse: y (in args.projection) + bias against the teacher.
FeatureMseArgs projection_error_args(const ProjectedFeatureMseArgs& args);

// The workspace of attention_transfer and similarity_preserving, carved the same way by both
// backends: the rows a_s, a_t and their gradients d_s, d_t ([rows, cols] each), then the row
// losses [rows].
template <typename Acc>
struct NormalizedRowsWorkspace {
  Acc *a_s, *a_t, *d_s, *d_t, *row_loss;
  NormalizedRowsWorkspace(void* workspace, std::int64_t rows, std::int64_t cols) {
    const std::int64_t size = rows * cols;
    a_s = static_cast<Acc*>(workspace);
    a_t = a_s + size;
    d_s = a_t + size;
    d_t = d_s + size;
    row_loss = d_t + size;
  }
  static std::size_t bytes(std::int64_t rows, std::int64_t cols) {
    return (4 * static_cast<std::size_t>(rows * cols) + static_cast<std::size_t>(rows)) * sizeof(Acc);
  }
};

// Most blocks a CUDA feature kernel's grid has (its per-block partials fit the workspace).
constexpr std::int64_t kFeatureMaxBlocks = 2048;
// Elements per partial sum of the CPU feature_mse kernel.
constexpr std::int64_t kFeatureCpuChunk = 1 << 14;

// Rows handed to one task, so that each task has some 16k elements of work.
std::int64_t rows_per_task(std::int64_t cols);

}  // namespace fusedkd::detail

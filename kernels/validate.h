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

// One factor per run of factor_group elements (neither one factor for all nor one per element)
// is the per-row scaling of scale_rows_*; as_rows gives those rows.
bool scales_by_rows(const ScaleElementsArgs& args);
ScaleRowsArgs as_rows(const ScaleElementsArgs& args);

// The squared-error pass of projected_feature_mse: y (in args.projection) + bias against the teacher.
FeatureMseArgs projection_error_args(const ProjectedFeatureMseArgs& args);

// Most blocks a CUDA feature kernel's grid has (its per-block partials fit the workspace).
constexpr std::int64_t kFeatureMaxBlocks = 2048;
// Elements per partial sum of the CPU feature_mse kernel.
constexpr std::int64_t kFeatureCpuChunk = 1 << 14;

// Rows handed to one task, so that each task has some 16k elements of work.
std::int64_t rows_per_task(std::int64_t cols);

}  // namespace fusedkd::detail

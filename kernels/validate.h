// Argument checks shared by the CPU and CUDA launchers (the ops check first, with their own
// messages; these guard the raw kernel API). std::invalid_argument for anything no kernel can run.
#pragma once

#include "fusedkd/feature.h"
#include "fusedkd/scale.h"
#include "fusedkd/soft_target.h"
#include "fusedkd/softmax.h"

namespace fusedkd::detail {

void validate(const SoftmaxForwardArgs& args);
void validate(const SoftmaxBackwardArgs& args);
void validate(const SoftTargetArgs& args);
// Every label is ignore_index or in [0, cols) (reads labels on the host).
void validate_labels_on_host(const SoftTargetArgs& args);
void validate(const ScaleRowsArgs& args);
void validate(const ScaleElementsArgs& args);

void validate(const FeatureMseArgs& args);
void validate(const AttentionTransferArgs& args);
void validate(const SimilarityPreservingArgs& args);
void validate(const ProjectedFeatureMseArgs& args);
void validate(const ProjectionBackwardArgs& args);

// The CUDA launchers write each gradient in its input's dtype: std::invalid_argument naming
// `launcher` when float16_gradients_in_float32 (a CPU launcher option) is set.
void check_cuda_gradient_dtypes(bool float16_gradients_in_float32, const char* launcher);

// `value` as a 32-bit BLAS dimension; std::invalid_argument naming `what` when it does not fit.
int blas_int(std::int64_t value, const char* what);

}  // namespace fusedkd::detail

// The feature-map losses: the device-independent half of the internal ops (argument checks,
// layouts, dtype conversions, allocation); each backend hands in its launchers.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <tuple>

#include "fusedkd/feature.h"

namespace fusedkd::torch_ext {

struct FeatureBackend {
  std::function<void(const FeatureMseArgs&)> mse;
  std::function<void(const AttentionTransferArgs&)> attention;
  std::function<void(const SimilarityPreservingArgs&)> similarity;
  std::function<void(const ProjectedFeatureMseArgs&)> projected;
  std::function<void(const ProjectionBackwardArgs&)> projection_backward;
  // The (student, teacher) dtypes feature_mse computes a pair in: the pair itself on the CPU,
  // cuda_kernel_dtypes (a promotion) on CUDA.
  std::function<DTypePair(DType, DType)> compute_dtypes;
};

using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// The `reduction` argument of the internal ops.
enum class Reduction : int64_t { None = 0, Sum = 1, Mean = 2, BatchMean = 3 };

Tensor3 feature_mse_forward_op(const at::Tensor& student, const at::Tensor& teacher, int64_t reduction,
                               bool grad_student, bool grad_teacher, const FeatureBackend& backend);
Tensor3 attention_transfer_forward_op(const at::Tensor& student, const at::Tensor& teacher, double p,
                                      int64_t reduction, bool grad_student, bool grad_teacher,
                                      const FeatureBackend& backend);
Tensor3 similarity_preserving_forward_op(const at::Tensor& student, const at::Tensor& teacher, bool grad_student,
                                         bool grad_teacher, const FeatureBackend& backend);
Tensor3 projected_feature_mse_forward_op(const at::Tensor& student, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias, const at::Tensor& teacher,
                                         int64_t reduction, bool keep_gradient, bool grad_teacher,
                                         const FeatureBackend& backend);
Tensor3 projection_backward_op(const at::Tensor& grad_projection, const at::Tensor& student, const at::Tensor& weight,
                               bool grad_student, bool grad_weight, bool grad_bias, const FeatureBackend& backend);

}  // namespace fusedkd::torch_ext

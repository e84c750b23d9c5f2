// The soft-target losses: the device-independent half of the ops (argument checks, the mapping
// of each public op onto the one fused kernel, tensor allocation); each backend hands in its
// launchers.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <tuple>

#include "fusedkd/soft_target.h"

namespace fusedkd::torch_ext {

struct SoftTargetBackend {
  std::function<void(const SoftTargetArgs&)> loss;
  // The (student, teacher) dtypes the kernels compute a pair in: the pair itself on the CPU,
  // cuda_kernel_dtypes (a promotion) on CUDA.
  std::function<DTypePair(DType, DType)> compute_dtypes;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_target_forward_op(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& labels,
    double temperature, int64_t divergence, double beta, int64_t ignore_index, double soft_scale,
    double hard_scale, bool per_row, bool divide_by_valid_rows, bool grad_student, bool grad_teacher,
    const SoftTargetBackend& backend);

}  // namespace fusedkd::torch_ext

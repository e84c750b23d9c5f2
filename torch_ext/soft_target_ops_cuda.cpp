// CUDA registrations of the soft-target internal ops: launches on LibTorch's current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "soft_target_ops.h"

namespace fusedkd::torch_ext {
namespace {

const SoftTargetBackend& cuda_backend() {
  static const SoftTargetBackend backend{
      [](const SoftTargetArgs& args) { soft_target_loss_cuda(args, at::cuda::getCurrentCUDAStream().stream()); },
      [](DType student, DType teacher) { return cuda_kernel_dtypes(student, teacher); }};
  return backend;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(
    const at::Tensor& s, const at::Tensor& t, const std::optional<at::Tensor>& labels, double temperature,
    int64_t divergence, double beta, int64_t ignore_index, double soft_scale, double hard_scale, bool per_row,
    bool divide, bool grad_s, bool grad_t) {
  const c10::cuda::CUDAGuard device_guard(s.device());
  return soft_target_forward_op(s, t, labels, temperature, divergence, beta, ignore_index, soft_scale, hard_scale,
                                per_row, divide, grad_s, grad_t, cuda_backend());
}

}  // namespace
}  // namespace fusedkd::torch_ext

TORCH_LIBRARY_IMPL(fusedkd, CUDA, m) {
  using namespace fusedkd::torch_ext;
  m.impl("_soft_target_forward", &forward_cuda);
}

// CUDA registration of fusedkd::_scale_grad_: the kernel on LibTorch's current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common.h"

namespace fusedkd::torch_ext {
namespace {

void scale_grad_cuda(at::Tensor& grad, const at::Tensor& grad_output) {
  const c10::cuda::CUDAGuard guard(grad.device());
  scale_grad_op(grad, grad_output, [](const ScaleElementsArgs& args) {
    scale_elements_cuda(args, at::cuda::getCurrentCUDAStream().stream());
  });
}

}  // namespace
}  // namespace fusedkd::torch_ext

TORCH_LIBRARY_IMPL(fusedkd, CUDA, m) { m.impl("_scale_grad_", &fusedkd::torch_ext::scale_grad_cuda); }

// CUDA registrations of softmax_t / log_softmax_t: launches on LibTorch's current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "softmax_ops.h"

namespace fusedkd::torch_ext {
namespace {

template <SoftmaxKind kKind>
at::Tensor forward_cuda(const at::Tensor& logits, double temperature) {
  const c10::cuda::CUDAGuard device_guard(logits.device());
  return softmax_forward_op(logits, temperature, kKind, [](const SoftmaxForwardArgs& args) {
    softmax_forward_cuda(args, at::cuda::getCurrentCUDAStream().stream());
  });
}

template <SoftmaxKind kKind>
at::Tensor backward_cuda(const at::Tensor& grad_output, const at::Tensor& output, double temperature) {
  const c10::cuda::CUDAGuard device_guard(output.device());
  return softmax_backward_op(grad_output, output, temperature, kKind,
                             [](const SoftmaxBackwardArgs& args) {
                               softmax_backward_cuda(args, at::cuda::getCurrentCUDAStream().stream());
                             });
}

}  // namespace
}  // namespace fusedkd::torch_ext

TORCH_LIBRARY_IMPL(fusedkd, CUDA, m) {
  using fusedkd::SoftmaxKind;
  using namespace fusedkd::torch_ext;
  m.impl("softmax_t", &forward_cuda<SoftmaxKind::Softmax>);
  m.impl("log_softmax_t", &forward_cuda<SoftmaxKind::LogSoftmax>);
  m.impl("softmax_t_backward", &backward_cuda<SoftmaxKind::Softmax>);
  m.impl("log_softmax_t_backward", &backward_cuda<SoftmaxKind::LogSoftmax>);
}

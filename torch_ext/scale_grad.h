// fusedkd::_scale_grad_, the backward of every loss op (autograd.h): grad *= grad_output in place,
// where grad_output is one value (also a broadcast one), the leading dims of grad (one factor per
// row; grad's rows must be contiguous blocks), or grad's shape (one factor per element). The
// kernels: scale_elements_cpu / scale_elements_cuda (fusedkd/scale.h).
#pragma once

#include <ATen/ATen.h>

namespace fusedkd::torch_ext {

struct Backend;

// The op's body on one backend (registered by register_backend_kernels, ops.h).
void scale_grad(const Backend& backend, at::Tensor& grad, const at::Tensor& grad_output);
void scale_grad_meta(at::Tensor& grad, const at::Tensor& grad_output);

// Calls fusedkd::_scale_grad_ through the dispatcher.
void scale_gradient(at::Tensor& grad, const at::Tensor& grad_output);

}  // namespace fusedkd::torch_ext

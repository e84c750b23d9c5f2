// softmax_t / log_softmax_t: the device-independent half of the ops (checks, shapes, argument
// packing); each backend hands in its kernel launcher.
#pragma once

#include <ATen/ATen.h>

#include <functional>

#include "fusedkd/softmax.h"

namespace fusedkd::torch_ext {

using SoftmaxForwardLauncher = std::function<void(const SoftmaxForwardArgs&)>;
using SoftmaxBackwardLauncher = std::function<void(const SoftmaxBackwardArgs&)>;

at::Tensor softmax_forward_op(const at::Tensor& logits, double temperature, SoftmaxKind kind,
                              const SoftmaxForwardLauncher& launch);
at::Tensor softmax_backward_op(const at::Tensor& grad_output, const at::Tensor& output,
                               double temperature, SoftmaxKind kind,
                               const SoftmaxBackwardLauncher& launch);

}  // namespace fusedkd::torch_ext

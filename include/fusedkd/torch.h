// The C++ API of the LibTorch ops (library fusedkd_torch, CMake target fusedkd::torch).
// Each function calls the registered op through the dispatcher, so autograd, CPU/CUDA dispatch
// and the argument checks are the same as for torch.ops.fusedkd.* in Python.
#pragma once

#include <ATen/core/Tensor.h>

namespace fusedkd {

// softmax(logits / temperature) over the last dim; result in logits' dtype.
at::Tensor softmax_t(const at::Tensor& logits, double temperature = 1.0);
// log_softmax(logits / temperature) over the last dim; result in logits' dtype.
at::Tensor log_softmax_t(const at::Tensor& logits, double temperature = 1.0);

}  // namespace fusedkd

#include "autograd.h"

namespace fusedkd::torch_ext {

std::vector<at::Tensor> call_fused_forward(const c10::OperatorHandle& op, at::TensorList inputs,
                                           const std::vector<c10::IValue>& options, const std::vector<bool>& wants) {
  torch::jit::Stack stack;
  stack.reserve(inputs.size() + options.size() + wants.size());
  for (const at::Tensor& x : inputs) stack.emplace_back(x.defined() ? c10::IValue(x) : c10::IValue());
  stack.insert(stack.end(), options.begin(), options.end());
  for (const bool want : wants) stack.emplace_back(want);
  op.callBoxed(stack);
  std::vector<at::Tensor> out;
  out.reserve(stack.size());
  for (c10::IValue& value : stack) out.push_back(std::move(value).toTensor());
  return out;
}

}  // namespace fusedkd::torch_ext

// The autograd of every loss op: the gradient comes from the forward.
//
// A loss op's fused forward is an internal op
//     _<loss>_forward(<inputs>, <options>, bool want_0, ..., bool want_k) -> (loss, buffer_0, ..., buffer_k)
// that writes, in the pass that computes the loss, gradient buffers for grad_output = 1 (empty
// when not wanted). GradientFromForward keeps the buffers; the backward scales them in place by
// grad_output (fusedkd::_scale_grad_, scale_grad.h) and hands them over, dropping its own
// reference, so no copy is made; a gradient whose buffer is not in its input's dtype (float32 for
// float16, common.h: gradient_buffer_type) is rounded to that dtype only after the scaling. A
// second backward through the same graph (retain_graph=True) runs the forward again from the
// saved inputs.
//
// A Loss says which internal op that is and how its buffers become the inputs' gradients:
//   static constexpr const char* kForwardOp;
//   static std::vector<bool> wants(const std::vector<bool>& needs);  // the buffers to ask for
//   static variable_list gradients(variable_list scaled_buffers, const variable_list& inputs,
//                                  const std::vector<bool>& needs);   // one per input
//   static constexpr bool kGradientsReadInputs;  // whether gradients() reads `inputs`
// DirectGradients is the common case: one buffer per input, the buffer is the gradient. The saved
// inputs are unpacked only when they are read (the recompute, or kGradientsReadInputs): the first
// backward then neither checks their version counters (an input changed in place after the
// forward does not matter, its gradient was computed before) nor runs saved-tensor unpack hooks
// (no copy back under torch.autograd.graph.save_on_cpu).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <vector>

#include "outputs.h"
#include "scale_grad.h"

namespace fusedkd::torch_ext {

using torch::autograd::variable_list;

struct DirectGradients {
  static constexpr bool kGradientsReadInputs = false;
  static std::vector<bool> wants(const std::vector<bool>& needs) { return needs; }
  static variable_list gradients(variable_list buffers, const variable_list&, const std::vector<bool>&) {
    return buffers;
  }
};

// Calls the internal op `op` boxed: the inputs (an undefined one as None), the options, the want
// flags; returns (loss, buffer_0, ...).
std::vector<at::Tensor> call_fused_forward(const c10::OperatorHandle& op, at::TensorList inputs,
                                           const std::vector<c10::IValue>& options, const std::vector<bool>& wants);

template <typename Loss>
std::vector<at::Tensor> fused_forward(at::TensorList inputs, const std::vector<c10::IValue>& options,
                                      const std::vector<bool>& wants) {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(Loss::kForwardOp, "");
  return call_fused_forward(op, inputs, options, wants);
}

template <typename Loss>
class GradientFromForward : public torch::autograd::Function<GradientFromForward<Loss>> {
 public:
  // `given`: the defined inputs; `present[i]`: input i is one of them (an optional input, such as
  // a bias, may be absent; it has no gradient and is passed to the internal op as None).
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList given,
                            const std::vector<c10::IValue>& options, const std::vector<bool>& present,
                            const std::vector<bool>& needs) {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<at::Tensor> out = fused_forward<Loss>(all_inputs(given, present), options, Loss::wants(needs));
    ctx->save_for_backward(given.vec());
    // The buffers live in saved_data so that the backward can drop this reference.
    c10::impl::GenericList buffers(c10::AnyType::get());
    for (std::size_t i = 1; i < out.size(); ++i) buffers.push_back(std::move(out[i]));
    ctx->saved_data["buffers"] = buffers;
    ctx->saved_data["options"] = c10::ivalue::Tuple::create(options);
    ctx->saved_data["present"] = bool_list(present);
    ctx->saved_data["needs"] = bool_list(needs);
    c10::List<int64_t> dtypes;  // the gradients' dtypes, without unpacking the saved inputs
    for (const at::Tensor& x : given) dtypes.push_back(static_cast<int64_t>(x.scalar_type()));
    ctx->saved_data["dtypes"] = dtypes;
    return out[0];
  }

  static variable_list backward(torch::autograd::AutogradContext* ctx, variable_list grad_outputs) {
    auto& data = ctx->saved_data;
    const std::vector<bool> present = bool_vector(data["present"]);
    const std::vector<bool> needs = bool_vector(data["needs"]);
    const std::vector<bool> wants = Loss::wants(needs);
    const bool recompute = !data["buffers"].isList();  // retain_graph: the first backward took them
    variable_list inputs(present.size());
    if (recompute || Loss::kGradientsReadInputs) inputs = all_inputs(ctx->get_saved_variables(), present);
    variable_list buffers;
    if (!recompute) {
      for (const c10::IValue& buffer : data["buffers"].toListRef()) buffers.push_back(buffer.toTensor());
      data["buffers"] = c10::IValue();  // handed over below: no copy
    } else {  // compute them again
      at::AutoDispatchBelowADInplaceOrView guard;
      const auto& options = data["options"].toTupleRef().elements();
      std::vector<at::Tensor> out =
          fused_forward<Loss>(inputs, std::vector<c10::IValue>(options.begin(), options.end()), wants);
      buffers.assign(out.begin() + 1, out.end());
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      if (wants[i]) {
        scale_gradient(buffers[i], grad_outputs[0]);
      } else {
        buffers[i] = at::Tensor();
      }
    }
    const variable_list grads = Loss::gradients(std::move(buffers), inputs, needs);
    const c10::List<int64_t> dtypes = data["dtypes"].toIntList();
    variable_list given_grads;  // one per given input, then none for the three other arguments
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      if (!present[i]) continue;
      const auto dtype = static_cast<at::ScalarType>(dtypes.get(given_grads.size()));
      given_grads.push_back(needs[i] ? converted_output(grads[i], dtype) : at::Tensor());
    }
    given_grads.resize(given_grads.size() + 3);
    return given_grads;
  }

 private:
  static std::vector<at::Tensor> all_inputs(at::TensorList given, const std::vector<bool>& present) {
    std::vector<at::Tensor> inputs;
    std::size_t next = 0;
    for (const bool is_given : present) inputs.push_back(is_given ? given[next++] : at::Tensor());
    return inputs;
  }
  static c10::List<bool> bool_list(const std::vector<bool>& flags) {
    c10::List<bool> list;  // (c10::List takes no std::vector<bool>)
    for (const bool flag : flags) list.push_back(flag);
    return list;
  }
  static std::vector<bool> bool_vector(const c10::IValue& list) {
    const c10::List<bool> flags = list.toBoolList();
    return {flags.begin(), flags.end()};
  }
};

// The loss op's value: through GradientFromForward when an input needs a gradient, else the fused
// forward alone (no buffers). `inputs` are the differentiable inputs (undefined for an absent
// optional one), in the internal op's order.
template <typename Loss>
at::Tensor run_loss(const std::vector<at::Tensor>& inputs, const std::vector<c10::IValue>& options) {
  const bool grad_mode = at::GradMode::is_enabled();
  std::vector<bool> present, needs;
  std::vector<at::Tensor> given;
  bool any = false;
  for (const at::Tensor& x : inputs) {
    present.push_back(x.defined());
    if (x.defined()) given.push_back(x);
    needs.push_back(grad_mode && x.defined() && x.requires_grad());
    any = any || needs.back();
  }
  if (!any) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fused_forward<Loss>(inputs, options, Loss::wants(needs))[0];
  }
  return GradientFromForward<Loss>::apply(at::TensorList(given), options, present, needs);
}

}  // namespace fusedkd::torch_ext

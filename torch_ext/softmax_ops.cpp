// softmax_t / log_softmax_t: checks, the CPU and Meta kernels, autograd, the C++ API.
#include "softmax_ops.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include "common.h"
#include "fusedkd/torch.h"

namespace fusedkd::torch_ext {
namespace {

const char* op_name(SoftmaxKind kind) {
  return kind == SoftmaxKind::Softmax ? "fusedkd::softmax_t" : "fusedkd::log_softmax_t";
}
const char* backward_op_name(SoftmaxKind kind) {
  return kind == SoftmaxKind::Softmax ? "fusedkd::softmax_t_backward"
                                      : "fusedkd::log_softmax_t_backward";
}

void check_forward(const at::Tensor& logits, double temperature, SoftmaxKind kind) {
  check_logits(op_name(kind), "logits", logits);
  check_temperature(op_name(kind), temperature);
}

void check_backward(const at::Tensor& grad_output, const at::Tensor& output, double temperature,
                    SoftmaxKind kind) {
  const char* op = backward_op_name(kind);
  check_logits(op, "output", output);
  TORCH_CHECK(grad_output.defined(), op, ": grad_output is an undefined tensor");
  TORCH_CHECK(grad_output.sizes() == output.sizes(), op, ": grad_output must have the shape of output ",
              output.sizes(), ", got ", grad_output.sizes());
  TORCH_CHECK(at::isFloatingType(grad_output.scalar_type()), op,
              ": grad_output must be a floating tensor, got ", grad_output.scalar_type());
  check_same_device(op, "grad_output", grad_output, "output", output);
  check_temperature(op, temperature);
}

}  // namespace

at::Tensor softmax_forward_op(const at::Tensor& logits, double temperature, SoftmaxKind kind,
                              const SoftmaxForwardLauncher& launch) {
  check_forward(logits, temperature, kind);
  const RowView in = row_view(logits);
  at::Tensor out = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  if (in.rows == 0) return out;
  SoftmaxForwardArgs args;
  args.input = in.tensor.const_data_ptr();
  args.output = out.mutable_data_ptr();
  args.dtype = kernel_dtype(logits.scalar_type());
  args.rows = in.rows;
  args.cols = in.cols;
  args.input_row_stride = in.row_stride;
  args.temperature = temperature;
  args.kind = kind;
  launch_kernel(op_name(kind), [&] { launch(args); });
  return out;
}

at::Tensor softmax_backward_op(const at::Tensor& grad_output, const at::Tensor& output,
                               double temperature, SoftmaxKind kind,
                               const SoftmaxBackwardLauncher& launch) {
  check_backward(grad_output, output, temperature, kind);
  // The kernels read one dtype; autograd hands grad_output in output's dtype already.
  const at::Tensor grad = grad_output.to(output.scalar_type());
  const RowView dy = row_view(grad);
  const RowView y = row_view(output);
  at::Tensor grad_input =
      at::empty(output.sizes(), output.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.rows == 0) return grad_input;
  SoftmaxBackwardArgs args;
  args.grad_output = dy.tensor.const_data_ptr();
  args.output = y.tensor.const_data_ptr();
  args.grad_input = grad_input.mutable_data_ptr();
  args.dtype = kernel_dtype(output.scalar_type());
  args.rows = y.rows;
  args.cols = y.cols;
  args.grad_output_row_stride = dy.row_stride;
  args.output_row_stride = y.row_stride;
  args.temperature = temperature;
  args.kind = kind;
  launch_kernel(backward_op_name(kind), [&] { launch(args); });
  return grad_input;
}

namespace {

// ---------------------------------------------------------------- CPU and Meta kernels

template <SoftmaxKind kKind>
at::Tensor forward_cpu(const at::Tensor& logits, double temperature) {
  return softmax_forward_op(logits, temperature, kKind, [](const SoftmaxForwardArgs& args) {
    softmax_forward_cpu(args, torch_cpu_executor());
  });
}

template <SoftmaxKind kKind>
at::Tensor backward_cpu(const at::Tensor& grad_output, const at::Tensor& output, double temperature) {
  return softmax_backward_op(grad_output, output, temperature, kKind,
                             [](const SoftmaxBackwardArgs& args) {
                               softmax_backward_cpu(args, torch_cpu_executor());
                             });
}

template <SoftmaxKind kKind>
at::Tensor forward_meta(const at::Tensor& logits, double temperature) {
  check_forward(logits, temperature, kKind);
  return at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
}

template <SoftmaxKind kKind>
at::Tensor backward_meta(const at::Tensor& grad_output, const at::Tensor& output, double temperature) {
  check_backward(grad_output, output, temperature, kKind);
  return at::empty(output.sizes(), output.options().memory_format(at::MemoryFormat::Contiguous));
}

// ---------------------------------------------------------------- autograd

c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, double)> forward_handle(SoftmaxKind kind) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(op_name(kind), "")
      .typed<at::Tensor(const at::Tensor&, double)>();
}

c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, double)> backward_handle(
    SoftmaxKind kind) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(backward_op_name(kind), "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
}

template <SoftmaxKind kKind>
class SoftmaxTFunction : public torch::autograd::Function<SoftmaxTFunction<kKind>> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits,
                            double temperature) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = forward_handle(kKind);
    at::Tensor output = op.call(logits, temperature);
    // Both backward formulas need only the output: softmax y, or log-softmax z with exp(z) = y.
    ctx->save_for_backward({output});
    ctx->saved_data["temperature"] = temperature;
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    static const auto op = backward_handle(kKind);
    const at::Tensor output = ctx->get_saved_variables()[0];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    return {op.call(grad_outputs[0], output, temperature), at::Tensor()};
  }
};

template <SoftmaxKind kKind>
at::Tensor forward_autograd(const at::Tensor& logits, double temperature) {
  return SoftmaxTFunction<kKind>::apply(logits, temperature);
}

}  // namespace
}  // namespace fusedkd::torch_ext

namespace fusedkd {

at::Tensor softmax_t(const at::Tensor& logits, double temperature) {
  static const auto op = torch_ext::forward_handle(SoftmaxKind::Softmax);
  return op.call(logits, temperature);
}

at::Tensor log_softmax_t(const at::Tensor& logits, double temperature) {
  static const auto op = torch_ext::forward_handle(SoftmaxKind::LogSoftmax);
  return op.call(logits, temperature);
}

}  // namespace fusedkd

TORCH_LIBRARY_IMPL(fusedkd, CPU, m) {
  using fusedkd::SoftmaxKind;
  using namespace fusedkd::torch_ext;
  m.impl("softmax_t", &forward_cpu<SoftmaxKind::Softmax>);
  m.impl("log_softmax_t", &forward_cpu<SoftmaxKind::LogSoftmax>);
  m.impl("softmax_t_backward", &backward_cpu<SoftmaxKind::Softmax>);
  m.impl("log_softmax_t_backward", &backward_cpu<SoftmaxKind::LogSoftmax>);
}

TORCH_LIBRARY_IMPL(fusedkd, Meta, m) {
  using fusedkd::SoftmaxKind;
  using namespace fusedkd::torch_ext;
  m.impl("softmax_t", &forward_meta<SoftmaxKind::Softmax>);
  m.impl("log_softmax_t", &forward_meta<SoftmaxKind::LogSoftmax>);
  m.impl("softmax_t_backward", &backward_meta<SoftmaxKind::Softmax>);
  m.impl("log_softmax_t_backward", &backward_meta<SoftmaxKind::LogSoftmax>);
}

TORCH_LIBRARY_IMPL(fusedkd, Autograd, m) {
  using fusedkd::SoftmaxKind;
  using namespace fusedkd::torch_ext;
  m.impl("softmax_t", &forward_autograd<SoftmaxKind::Softmax>);
  m.impl("log_softmax_t", &forward_autograd<SoftmaxKind::LogSoftmax>);
}

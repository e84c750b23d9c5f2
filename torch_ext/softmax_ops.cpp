// softmax_t / log_softmax_t and their backward ops: checks, the bodies on any backend, the Meta
// kernels, autograd, the C++ API.
#include <torch/autograd.h>

#include "common.h"
#include "fusedkd/torch.h"
#include "ops.h"
#include "outputs.h"

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

template <SoftmaxKind K>
at::Tensor softmax_forward(const Backend& backend, const at::Tensor& logits, double temperature) {
  check_forward(logits, temperature, K);
  const RowView in = row_view(logits);
  at::Tensor out = empty_output(logits.sizes(), logits.options());
  if (in.rows == 0) return out;
  SoftmaxForwardArgs args;
  args.input = in.tensor.const_data_ptr();
  args.output = out.mutable_data_ptr();
  args.dtype = kernel_dtype(logits.scalar_type());
  args.rows = in.rows;
  args.cols = in.cols;
  args.input_row_stride = in.row_stride;
  args.temperature = temperature;
  args.kind = K;
  launch_kernel(op_name(K), [&] { backend.softmax_forward(args); });
  return out;
}

template <SoftmaxKind K>
at::Tensor softmax_backward(const Backend& backend, const at::Tensor& grad_output, const at::Tensor& output,
                            double temperature) {
  check_backward(grad_output, output, temperature, K);
  // The kernels read one dtype; autograd hands grad_output in output's dtype already.
  const at::Tensor grad = grad_output.to(output.scalar_type());
  const RowView dy = row_view(grad);
  const RowView y = row_view(output);
  at::Tensor grad_input = empty_output(output.sizes(), output.options());
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
  args.kind = K;
  launch_kernel(backward_op_name(K), [&] { backend.softmax_backward(args); });
  return grad_input;
}

template <SoftmaxKind K>
at::Tensor softmax_forward_meta(const at::Tensor& logits, double temperature) {
  check_forward(logits, temperature, K);
  return at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
}

template <SoftmaxKind K>
at::Tensor softmax_backward_meta(const at::Tensor& grad_output, const at::Tensor& output, double temperature) {
  check_backward(grad_output, output, temperature, K);
  return at::empty(output.sizes(), output.options().memory_format(at::MemoryFormat::Contiguous));
}

namespace {

// ---------------------------------------------------------------- autograd

template <SoftmaxKind K>
auto forward_handle() {
  static const auto op = find_op<at::Tensor(const at::Tensor&, double)>(op_name(K));
  return op;
}

template <SoftmaxKind K>
class SoftmaxTFunction : public torch::autograd::Function<SoftmaxTFunction<K>> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, double temperature) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output = forward_handle<K>().call(logits, temperature);
    // Both backward formulas need only the output: softmax y, or log-softmax z with exp(z) = y.
    ctx->save_for_backward({output});
    ctx->saved_data["temperature"] = temperature;
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    static const auto op =
        find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>(backward_op_name(K));
    const at::Tensor output = ctx->get_saved_variables()[0];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    return {op.call(grad_outputs[0], output, temperature), at::Tensor()};
  }
};

}  // namespace

template <SoftmaxKind K>
at::Tensor softmax_op(const at::Tensor& logits, double temperature) {
  return SoftmaxTFunction<K>::apply(logits, temperature);
}

#define FUSEDKD_SOFTMAX_INSTANCES(K)                                                                       \
  template at::Tensor softmax_forward<K>(const Backend&, const at::Tensor&, double);                      \
  template at::Tensor softmax_backward<K>(const Backend&, const at::Tensor&, const at::Tensor&, double); \
  template at::Tensor softmax_forward_meta<K>(const at::Tensor&, double);                                 \
  template at::Tensor softmax_backward_meta<K>(const at::Tensor&, const at::Tensor&, double);             \
  template at::Tensor softmax_op<K>(const at::Tensor&, double);
FUSEDKD_SOFTMAX_INSTANCES(SoftmaxKind::Softmax)
FUSEDKD_SOFTMAX_INSTANCES(SoftmaxKind::LogSoftmax)
#undef FUSEDKD_SOFTMAX_INSTANCES

}  // namespace fusedkd::torch_ext

namespace fusedkd {

at::Tensor softmax_t(const at::Tensor& logits, double temperature) {
  return torch_ext::forward_handle<SoftmaxKind::Softmax>().call(logits, temperature);
}

at::Tensor log_softmax_t(const at::Tensor& logits, double temperature) {
  return torch_ext::forward_handle<SoftmaxKind::LogSoftmax>().call(logits, temperature);
}

}  // namespace fusedkd

// fusedkd::_scale_grad_ (scale_grad.h): the in-place scaling by grad_output that the backward of
// every loss op applies to the gradients its forward wrote.
#include "scale_grad.h"

#include "backend.h"
#include "common.h"

namespace fusedkd::torch_ext {

void scale_grad(const Backend& backend, at::Tensor& grad, const at::Tensor& grad_output) {
  const char* op = "fusedkd::_scale_grad_";
  check_same_device(op, "grad", grad, "grad_output", grad_output);
  TORCH_CHECK(grad.is_non_overlapping_and_dense(), op, ": grad must be dense");
  if (grad.numel() == 0) return;
  const bool is_double = grad.scalar_type() == at::kDouble;
  const at::ScalarType factor_type = is_double ? at::kDouble : at::kFloat;
  ScaleElementsArgs args;
  args.data = grad.mutable_data_ptr();
  args.dtype = kernel_dtype(grad.scalar_type());
  args.numel = grad.numel();
  args.factors_are_double = is_double;
  bool broadcast = grad_output.numel() >= 1;  // every stride 0: one value seen many times
  for (int64_t d = 0; d < grad_output.dim(); ++d)
    broadcast = broadcast && (grad_output.stride(d) == 0 || grad_output.size(d) == 1);
  const int64_t leading = grad_output.dim();
  at::Tensor factors;
  if (broadcast) {
    factors = grad_output.as_strided({1}, {1}).to(factor_type).contiguous();
    args.factor_group = grad.numel();
  } else if (grad_output.sizes() == grad.sizes()) {  // elementwise, in grad's memory order
    factors = at::empty_strided(grad.sizes(), grad.strides(), grad_output.options().dtype(factor_type))
                  .copy_(grad_output);
    args.factor_group = 1;
  } else {  // one factor per row of the leading dims; each row a contiguous block of grad
    bool rows = leading < grad.dim() && grad_output.sizes() == grad.sizes().slice(0, leading);
    int64_t block = 1;
    for (int64_t d = leading; rows && d < grad.dim(); ++d) block *= grad.size(d);
    for (int64_t d = leading - 1; rows && d >= 0; --d) {
      rows = grad.size(d) == 1 || grad.stride(d) == block;
      block *= grad.size(d);
    }
    TORCH_CHECK(rows, op, ": grad_output of shape ", grad_output.sizes(), " does not fit grad of shape ",
                grad.sizes(), " and strides ", grad.strides());
    factors = grad_output.to(factor_type).contiguous();
    args.factor_group = grad.numel() / grad_output.numel();
  }
  args.factors = factors.const_data_ptr();
  launch_kernel(op, [&] { backend.scale_elements(args); });
}

void scale_grad_meta(at::Tensor&, const at::Tensor&) {}

void scale_gradient(at::Tensor& grad, const at::Tensor& grad_output) {
  static const auto op = find_op<void(at::Tensor&, const at::Tensor&)>("fusedkd::_scale_grad_");
  op.call(grad, grad_output);
}

}  // namespace fusedkd::torch_ext

// attention_transfer: checks, layouts, the body of _attention_transfer_forward on any backend, its
// Meta kernel, the public op (autograd: GradientFromForward) and the C++ API.
#include <cmath>

#include "autograd.h"
#include "feature_common.h"
#include "fusedkd/torch.h"
#include "ops.h"

namespace fusedkd::torch_ext {
namespace {

FeatureMap feature_map(const at::Tensor& x, bool channels_last) {
  FeatureMap map;
  map.data = x.const_data_ptr();
  map.dtype = kernel_dtype(x.scalar_type());
  map.channels = x.size(1);
  map.channels_last = channels_last;
  return map;
}

void check_attention_pair(const char* op, const at::Tensor& s, const at::Tensor& t, double p) {
  check_features(op, "student", s, 2);
  check_features(op, "teacher", t, 2);
  check_same_device(op, "student", s, "teacher", t);
  TORCH_CHECK(s.dim() == t.dim() && s.size(0) == t.size(0) && s.sizes().slice(2) == t.sizes().slice(2), op,
              ": student and teacher must share the batch and spatial dims ([N, C, *spatial]; channels may "
              "differ), got ",
              s.sizes(), " and ", t.sizes());
  TORCH_CHECK(s.size(1) >= 1 && t.size(1) >= 1, op, ": student and teacher need at least one channel, got ",
              s.sizes(), " and ", t.sizes());
  TORCH_CHECK(spatial_size(s) >= 1, op, ": the spatial dims must not be empty, got ", s.sizes());
  TORCH_CHECK(std::isfinite(p) && p > 0, op, ": p must be finite and > 0, got ", p);
}

}  // namespace

Tensor3 attention_transfer_forward(const Backend& backend, const at::Tensor& student, const at::Tensor& teacher,
                                   double p, int64_t reduction, bool grad_student, bool grad_teacher) {
  const char* op = "fusedkd::attention_transfer";
  const bool per_row = reduction == static_cast<int64_t>(Reduction::None);
  check_attention_pair(op, student, teacher, p);
  const bool s_last = prefers_channels_last(student), t_last = prefers_channels_last(teacher);
  const at::Tensor s = to_layout(student, s_last, read_type(backend, student, grad_student));
  const at::Tensor t = to_layout(teacher, t_last, read_type(backend, teacher, grad_teacher));
  const auto loss_options = s.options().dtype(loss_scalar_type({s.scalar_type(), t.scalar_type()}));
  const int64_t batch = s.size(0);
  at::Tensor loss = per_row ? at::empty({batch}, loss_options) : at::empty({}, loss_options);
  at::Tensor gs =
      maybe_empty(grad_student, [&] { return empty_layout(s.sizes(), s_last, gradient_buffer_options(s)); }, s);
  at::Tensor gt =
      maybe_empty(grad_teacher, [&] { return empty_layout(t.sizes(), t_last, gradient_buffer_options(t)); }, t);

  AttentionTransferArgs args;
  args.student = feature_map(s, s_last);
  args.teacher = feature_map(t, t_last);
  args.batch = batch;
  args.spatial = spatial_size(s);
  args.p = p;
  args.per_row_loss = per_row;
  args.float16_gradients_in_float32 = backend.float16_gradients_in_float32;
  const at::Tensor workspace =
      bind_outputs(args, loss, grad_student, gs, grad_teacher, gt, attention_transfer_workspace_bytes, s.options());
  const double batch_size = static_cast<double>(batch);
  launch_reduced(op, reduction_factor(reduction, batch_size * static_cast<double>(args.spatial), batch_size), loss,
                 args.scale, [&] { backend.attention_transfer(args); });
  // (a float16 input's buffer is float32 already; the placeholders take the same dtypes)
  return {loss, gs.to(gradient_buffer_type(student.scalar_type())), gt.to(gradient_buffer_type(teacher.scalar_type()))};
}

Tensor3 attention_transfer_forward_meta(const at::Tensor& s, const at::Tensor& t, double, int64_t reduction, bool gs,
                                        bool gt) {
  const auto loss_options = s.options().dtype(loss_scalar_type({s.scalar_type(), t.scalar_type()}));
  const bool per_row = reduction == static_cast<int64_t>(Reduction::None);
  return {per_row ? at::empty_symint({s.sym_size(0)}, loss_options) : at::empty({}, loss_options),
          meta_empty(gs, s, gradient_buffer_options(s)), meta_empty(gt, t, gradient_buffer_options(t))};
}

namespace {
struct AttentionTransferLoss : DirectGradients {
  static constexpr const char* kForwardOp = "fusedkd::_attention_transfer_forward";
};
}  // namespace

at::Tensor attention_transfer_op(const at::Tensor& s, const at::Tensor& t, double p, c10::string_view reduction) {
  const Reduction code = parse_reduction("fusedkd::attention_transfer", reduction, /*allow_batchmean=*/true);
  return run_loss<AttentionTransferLoss>({s, t}, {p, static_cast<int64_t>(code)});
}

}  // namespace fusedkd::torch_ext

at::Tensor fusedkd::attention_transfer(const at::Tensor& student, const at::Tensor& teacher, double p,
                                       const std::string& reduction) {
  static const auto op =
      torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::string_view)>(
          "fusedkd::attention_transfer");
  return op.call(student, teacher, p, reduction);
}

// projected_feature_mse (the FitNets hint): checks, layouts, the bodies of
// _projected_feature_mse_forward (y = W x + b and the squared error, keeping dL/dy) and of
// _projection_backward (the GEMMs from dL/dy) on any backend, their Meta kernels, the public op and
// the C++ API. Autograd: GradientFromForward with the projection's backward as its last step.
#include <vector>

#include "autograd.h"
#include "feature_common.h"
#include "fusedkd/torch.h"
#include "ops.h"

namespace fusedkd::torch_ext {
namespace {

struct Projection {
  at::Tensor x, w;
  bool channels_last;
  at::ScalarType compute;
  ProjectionShape shape;
};

void check_projection(const char* op, const at::Tensor& student, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias) {
  check_features(op, "student", student, 2);
  check_features(op, "weight", weight, 2);
  check_same_device(op, "student", student, "weight", weight);
  bool trailing_ones = true;
  for (int64_t d = 2; d < weight.dim(); ++d) trailing_ones = trailing_ones && weight.size(d) == 1;
  TORCH_CHECK(trailing_ones && weight.size(1) == student.size(1), op,
              ": weight must be [C_t, C_s] (or a 1x1 convolution's [C_t, C_s, 1, ...]) with C_s = ",
              student.size(1), " (the student's channels), got ", weight.sizes());
  TORCH_CHECK(weight.size(0) >= 1, op, ": weight needs at least one output channel, got ", weight.sizes());
  if (bias && bias->defined()) {
    check_features(op, "bias", *bias, 1);
    check_same_device(op, "student", student, "bias", *bias);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [C_t] = [",
                weight.size(0), "], got ", bias->sizes());
  }
}

Projection make_projection(const at::Tensor& student, const at::Tensor& weight, at::ScalarType compute) {
  Projection p;
  p.compute = compute;
  p.channels_last = prefers_channels_last(student);
  p.x = to_layout(student, p.channels_last, compute);
  p.w = weight.to(compute).reshape({weight.size(0), weight.size(1)}).contiguous();
  ProjectionShape& s = p.shape;
  s.student = p.x.const_data_ptr();
  s.batch = p.x.size(0);
  s.in_channels = p.x.size(1);
  s.out_channels = p.w.size(0);
  s.spatial = spatial_size(p.x);
  s.channels_last = p.channels_last;
  s.channel_stride = p.channels_last ? 1 : s.spatial;
  s.spatial_stride = p.channels_last ? s.in_channels : 1;
  s.batch_stride = s.in_channels * s.spatial;
  s.weight = p.w.const_data_ptr();
  s.is_double = compute == at::kDouble;
  return p;
}

std::vector<int64_t> projected_sizes(const at::Tensor& student, int64_t out_channels) {
  std::vector<int64_t> sizes(student.sizes().begin(), student.sizes().end());
  sizes[1] = out_channels;
  return sizes;
}

}  // namespace

Tensor3 projected_feature_mse_forward(const Backend& backend, const at::Tensor& student, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, const at::Tensor& teacher,
                                      int64_t reduction, bool keep_gradient, bool grad_teacher) {
  const char* op = "fusedkd::projected_feature_mse";
  const bool elementwise = reduction == static_cast<int64_t>(Reduction::None);
  check_projection(op, student, weight, bias);
  check_features(op, "teacher", teacher, 2);
  check_same_device(op, "student", student, "teacher", teacher);
  const std::vector<int64_t> sizes = projected_sizes(student, weight.size(0));
  TORCH_CHECK(teacher.sizes() == at::IntArrayRef(sizes), op, ": teacher must be ", at::IntArrayRef(sizes),
              " (the student's shape with C_t = weight.size(0) channels), got ", teacher.sizes());
  const bool has_bias = bias && bias->defined();
  const at::ScalarType compute =
      loss_scalar_type({student.scalar_type(), weight.scalar_type(), teacher.scalar_type(),
                        has_bias ? bias->scalar_type() : at::kFloat});
  const Projection p = make_projection(student, weight, compute);
  const at::ScalarType teacher_type =
      scalar_type(backend.compute_dtypes(kernel_dtype(compute), kernel_dtype(kernel_input_type(teacher, grad_teacher)))
                      .teacher);
  const at::Tensor t = to_layout(teacher, p.channels_last, teacher_type);
  const at::Tensor b = has_bias ? bias->to(compute).contiguous() : at::Tensor();
  const auto options = p.x.options();
  at::Tensor projection = empty_layout(sizes, p.channels_last, options);
  at::Tensor loss = elementwise ? empty_layout(sizes, p.channels_last, options) : at::empty({}, options);
  at::Tensor gt = maybe_empty(grad_teacher, [&] { return empty_layout(sizes, p.channels_last, t.options()); }, t);

  ProjectedFeatureMseArgs args;
  args.shape = p.shape;
  args.bias = has_bias ? b.const_data_ptr() : nullptr;
  args.teacher = t.const_data_ptr();
  args.teacher_dtype = kernel_dtype(t.scalar_type());
  args.elementwise_loss = elementwise;
  args.loss = loss.mutable_data_ptr();
  args.projection = projection.mutable_data_ptr();
  args.write_gradient = keep_gradient;
  args.grad_teacher = grad_teacher ? gt.mutable_data_ptr() : nullptr;
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(projected_feature_mse_workspace_bytes(args))}, options.dtype(at::kByte));
  args.workspace = workspace.mutable_data_ptr();
  launch_reduced(op, reduction_factor(reduction, static_cast<double>(t.numel()), 0), loss, args.scale,
                 [&] { backend.projected_feature_mse(args); });
  gt = gt.to(gradient_buffer_type(teacher.scalar_type()));  // (the placeholder too, as the Meta kernel)
  return {loss, keep_gradient ? projection : at::empty({0}, options), gt};
}

Tensor3 projection_backward(const Backend& backend, const at::Tensor& grad_projection, const at::Tensor& student,
                            const at::Tensor& weight, bool grad_student, bool grad_weight, bool grad_bias) {
  const char* op = "fusedkd::_projection_backward";
  check_projection(op, student, weight, std::nullopt);
  // (the backend runs on grad_projection's device, its first argument)
  check_features(op, "grad_projection", grad_projection, 2);
  check_same_device(op, "grad_projection", grad_projection, "student", student);
  const Projection p = make_projection(student, weight, grad_projection.scalar_type());
  const std::vector<int64_t> sizes = projected_sizes(student, weight.size(0));
  TORCH_CHECK(grad_projection.sizes() == at::IntArrayRef(sizes), op, ": grad_projection must be ",
              at::IntArrayRef(sizes), ", got ", grad_projection.sizes());
  const at::Tensor g = to_layout(grad_projection, p.channels_last, p.compute);
  const auto options = p.x.options();
  at::Tensor gx = maybe_empty(grad_student, [&] { return empty_layout(p.x.sizes(), p.channels_last, options); }, p.x);
  at::Tensor gw = maybe_empty(grad_weight, [&] { return at::empty(p.w.sizes(), options); }, p.x);
  at::Tensor gb = maybe_empty(grad_bias, [&] { return at::empty({p.w.size(0)}, options); }, p.x);
  ProjectionBackwardArgs args;
  args.shape = p.shape;
  args.grad_projection = g.const_data_ptr();
  args.grad_student = grad_student ? gx.mutable_data_ptr() : nullptr;
  args.grad_weight = grad_weight ? gw.mutable_data_ptr() : nullptr;
  args.grad_bias = grad_bias ? gb.mutable_data_ptr() : nullptr;
  launch_kernel(op, [&] { backend.projection_backward(args); });
  return {gx, gw, gb};
}

Tensor3 projected_feature_mse_forward_meta(const at::Tensor& s, const at::Tensor& w, const std::optional<at::Tensor>& b,
                                           const at::Tensor& t, int64_t reduction, bool keep, bool gt) {
  const bool has_bias = b && b->defined();
  const auto options = s.options().dtype(loss_scalar_type(
      {s.scalar_type(), w.scalar_type(), t.scalar_type(), has_bias ? b->scalar_type() : at::kFloat}));
  const bool elementwise = reduction == static_cast<int64_t>(Reduction::None);
  return {elementwise ? at::empty_like(t, options) : at::empty({}, options), meta_empty(keep, t, options),
          meta_empty(gt, t, gradient_buffer_options(t))};
}

Tensor3 projection_backward_meta(const at::Tensor& g, const at::Tensor& s, const at::Tensor& w, bool gx, bool gw,
                                 bool gb) {
  const auto options = g.options();
  return {meta_empty(gx, s, options),
          gw ? at::empty_symint({w.sym_size(0), w.sym_size(1)}, options) : at::empty({0}, options),
          gb ? at::empty_symint({w.sym_size(0)}, options) : at::empty({0}, options)};
}

namespace {

// Inputs (student, weight, bias, teacher); the forward's buffers are dL/dy (when the student, the
// weight or the bias needs a gradient) and the teacher's gradient. The GEMMs that turn dL/dy into
// the gradients of x, W and b run once grad_output has scaled it.
struct ProjectedFeatureMseLoss {
  static constexpr const char* kForwardOp = "fusedkd::_projected_feature_mse_forward";
  static constexpr bool kGradientsReadInputs = true;
  static std::vector<bool> wants(const std::vector<bool>& needs) {
    return {needs[0] || needs[1] || needs[2], needs[3]};
  }
  static variable_list gradients(variable_list buffers, const variable_list& inputs, const std::vector<bool>& needs) {
    const at::Tensor &student = inputs[0], &weight = inputs[1], &bias = inputs[2];
    variable_list grads(4);
    grads[3] = buffers[1];
    if (buffers[0].defined()) {
      static const auto op =
          find_op<Tensor3(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool, bool)>(
              "fusedkd::_projection_backward");
      auto [gx, gw, gb] = op.call(buffers[0], student, weight, needs[0], needs[1], needs[2]);
      if (needs[0]) grads[0] = gx.to(student.scalar_type());
      if (needs[1]) grads[1] = gw.reshape(weight.sizes()).to(weight.scalar_type());
      if (needs[2]) grads[2] = gb.to(bias.scalar_type());
    }
    return grads;
  }
};

}  // namespace

at::Tensor projected_feature_mse_op(const at::Tensor& student, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, const at::Tensor& teacher,
                                    c10::string_view reduction) {
  const Reduction code = parse_reduction("fusedkd::projected_feature_mse", reduction, /*allow_batchmean=*/false);
  const at::Tensor b = bias && bias->defined() ? *bias : at::Tensor();
  return run_loss<ProjectedFeatureMseLoss>({student, weight, b, teacher}, {static_cast<int64_t>(code)});
}

}  // namespace fusedkd::torch_ext

at::Tensor fusedkd::projected_feature_mse(const at::Tensor& student, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias, const at::Tensor& teacher,
                                          const std::string& reduction) {
  static const auto op = torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                       const std::optional<at::Tensor>&, const at::Tensor&,
                                                       c10::string_view)>("fusedkd::projected_feature_mse");
  return op.call(student, weight, bias, teacher, reduction);
}

// feature_mse: checks, layout and dtypes, the body of _feature_mse_forward on any backend, its Meta
// kernel, the public op (autograd: GradientFromForward) and the C++ API.
#include "autograd.h"
#include "feature_common.h"
#include "fusedkd/torch.h"
#include "ops.h"
#include "outputs.h"

namespace fusedkd::torch_ext {

Tensor3 feature_mse_forward(const Backend& backend, const at::Tensor& student, const at::Tensor& teacher,
                            int64_t reduction, bool grad_student, bool grad_teacher) {
  const char* op = "fusedkd::feature_mse";
  const bool elementwise = reduction == static_cast<int64_t>(Reduction::None);
  check_features(op, "student", student, 1);
  check_features(op, "teacher", teacher, 1);
  TORCH_CHECK(student.sizes() == teacher.sizes(), op, ": student and teacher must have the same shape, got ",
              student.sizes(), " and ", teacher.sizes());
  check_same_device(op, "student", student, "teacher", teacher);
  // Memory order: the student's when it is dense, with the teacher brought to the same strides. The
  // dtypes: the inputs' own or a promotion of them (the loss dtype stays the spec's, the gradients
  // are returned as their inputs' gradient buffers).
  const DTypePair used = backend.compute_dtypes(kernel_dtype(read_type(backend, student, grad_student)),
                                                kernel_dtype(read_type(backend, teacher, grad_teacher)));
  const at::Tensor s = converted_output(student.is_non_overlapping_and_dense() ? student : student.contiguous(),
                                        scalar_type(used.student));  // strides kept
  const at::ScalarType teacher_type = scalar_type(used.teacher);
  at::Tensor t = teacher;
  if (teacher_type != teacher.scalar_type() || !teacher.is_non_overlapping_and_dense() ||
      teacher.strides() != s.strides())
    t = at::empty_strided(s.sizes(), s.strides(), teacher.options().dtype(teacher_type)).copy_(teacher);
  const auto loss_options = s.options().dtype(loss_scalar_type({s.scalar_type(), t.scalar_type()}));
  at::Tensor loss =
      elementwise ? empty_strided_output(s.sizes(), s.strides(), loss_options) : at::empty({}, loss_options);
  const auto like = [](const at::Tensor& x) {  // its gradient (backend.h: the gradient buffer's dtype)
    return empty_strided_output(x.sizes(), x.strides(), gradient_buffer_options(x));
  };
  at::Tensor gs = maybe_empty(grad_student, [&] { return like(s); }, s);
  at::Tensor gt = maybe_empty(grad_teacher, [&] { return like(t); }, t);

  FeatureMseArgs args;
  args.student = s.const_data_ptr();
  args.student_dtype = kernel_dtype(s.scalar_type());
  args.teacher = t.const_data_ptr();
  args.teacher_dtype = kernel_dtype(t.scalar_type());
  args.numel = s.numel();
  args.elementwise_loss = elementwise;
  args.float16_gradients_in_float32 = backend.float16_gradients_in_float32;
  const at::Tensor workspace =
      bind_outputs(args, loss, grad_student, gs, grad_teacher, gt, feature_mse_workspace_bytes, s.options());
  launch_reduced(op, reduction_factor(reduction, static_cast<double>(s.numel()), 0), loss, args.scale,
                 [&] { backend.feature_mse(args); });
  return {loss, gs.to(gradient_buffer_type(student.scalar_type())),
          gt.to(gradient_buffer_type(teacher.scalar_type()))};
}

Tensor3 feature_mse_forward_meta(const at::Tensor& s, const at::Tensor& t, int64_t reduction, bool gs, bool gt) {
  const auto loss_options = s.options().dtype(loss_scalar_type({s.scalar_type(), t.scalar_type()}));
  const bool elementwise = reduction == static_cast<int64_t>(Reduction::None);
  return {elementwise ? at::empty_like(s, loss_options) : at::empty({}, loss_options),
          meta_empty(gs, s, gradient_buffer_options(s)), meta_empty(gt, t, gradient_buffer_options(t))};
}

namespace {
struct FeatureMseLoss : DirectGradients {
  static constexpr const char* kForwardOp = "fusedkd::_feature_mse_forward";
};
}  // namespace

at::Tensor feature_mse_op(const at::Tensor& s, const at::Tensor& t, c10::string_view reduction) {
  const Reduction code = parse_reduction("fusedkd::feature_mse", reduction, /*allow_batchmean=*/false);
  return run_loss<FeatureMseLoss>({s, t}, {static_cast<int64_t>(code)});
}

}  // namespace fusedkd::torch_ext

at::Tensor fusedkd::feature_mse(const at::Tensor& student, const at::Tensor& teacher, const std::string& reduction) {
  static const auto op = torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>(
      "fusedkd::feature_mse");
  return op.call(student, teacher, reduction);
}

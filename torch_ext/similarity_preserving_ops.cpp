// similarity_preserving: checks, the [N, D] row view, the body of _similarity_preserving_forward on
// any backend, its Meta kernel, the public op (autograd: GradientFromForward) and the C++ API.
#include <cmath>

#include "autograd.h"
#include "feature_common.h"
#include "fusedkd/torch.h"
#include "ops.h"
#include "outputs.h"

namespace fusedkd::torch_ext {
namespace {

int64_t features_per_sample(const at::Tensor& x) {
  int64_t count = 1;
  for (int64_t d = 1; d < x.dim(); ++d) count *= x.size(d);
  return count;
}

// x as [N, D] rows of `dtype` with contiguous elements.
at::Tensor feature_rows(const at::Tensor& x, at::ScalarType dtype) {
  at::Tensor rows = converted_output(x, dtype).reshape({x.size(0), features_per_sample(x)});
  if (rows.size(1) > 1 && (rows.stride(1) != 1 || rows.stride(0) < rows.size(1))) rows = rows.contiguous();
  if (rows.size(1) == 1 && rows.stride(0) < 1) rows = rows.contiguous();
  return rows;
}

int64_t row_stride(const at::Tensor& rows) { return rows.size(0) > 1 ? rows.stride(0) : rows.size(1); }

}  // namespace

Tensor3 similarity_preserving_forward(const Backend& backend, const at::Tensor& student, const at::Tensor& teacher,
                                      bool grad_student, bool grad_teacher) {
  const char* op = "fusedkd::similarity_preserving";
  check_features(op, "student", student, 1);
  check_features(op, "teacher", teacher, 1);
  check_same_device(op, "student", student, "teacher", teacher);
  TORCH_CHECK(student.size(0) == teacher.size(0), op, ": student and teacher must have the same batch size, got ",
              student.sizes(), " and ", teacher.sizes());
  const int64_t batch = student.size(0);
  TORCH_CHECK(features_per_sample(student) >= 1 && features_per_sample(teacher) >= 1, op,
              ": every sample needs at least one feature, got ", student.sizes(), " and ", teacher.sizes());
  const at::ScalarType compute = loss_scalar_type({student.scalar_type(), teacher.scalar_type()});
  const at::Tensor fs = feature_rows(student, compute), ft = feature_rows(teacher, compute);
  at::Tensor loss = at::empty({}, fs.options());
  at::Tensor gs = maybe_empty(grad_student, [&] { return empty_output(fs.sizes(), fs.options()); }, fs);
  at::Tensor gt = maybe_empty(grad_teacher, [&] { return empty_output(ft.sizes(), ft.options()); }, ft);

  SimilarityPreservingArgs args;
  args.student = fs.const_data_ptr();
  args.student_cols = fs.size(1);
  args.student_row_stride = row_stride(fs);
  args.teacher = ft.const_data_ptr();
  args.teacher_cols = ft.size(1);
  args.teacher_row_stride = row_stride(ft);
  args.rows = batch;
  args.is_double = compute == at::kDouble;
  const at::Tensor workspace = bind_outputs(args, loss, grad_student, gs, grad_teacher, gt,
                                            similarity_preserving_workspace_bytes, fs.options());
  launch_kernel(op, [&] { backend.similarity_preserving(args); });
  if (batch == 0) loss.fill_(std::nan(""));  // ||G~_s - G~_t||^2 / N^2 of no samples: 0 / 0, as torch's
  if (grad_student) gs = gs.reshape(student.sizes());
  if (grad_teacher) gt = gt.reshape(teacher.sizes());
  // Every buffer, placeholders included, in its gradient buffer dtype (as the Meta kernel says).
  gs = gs.to(gradient_buffer_type(student.scalar_type()));
  gt = gt.to(gradient_buffer_type(teacher.scalar_type()));
  return {loss, gs, gt};
}

Tensor3 similarity_preserving_forward_meta(const at::Tensor& s, const at::Tensor& t, bool gs, bool gt) {
  const auto loss_options = s.options().dtype(loss_scalar_type({s.scalar_type(), t.scalar_type()}));
  return {at::empty({}, loss_options), meta_empty(gs, s, gradient_buffer_options(s)),
          meta_empty(gt, t, gradient_buffer_options(t))};
}

namespace {
struct SimilarityPreservingLoss : DirectGradients {
  static constexpr const char* kForwardOp = "fusedkd::_similarity_preserving_forward";
};
}  // namespace

at::Tensor similarity_preserving_op(const at::Tensor& s, const at::Tensor& t) {
  return run_loss<SimilarityPreservingLoss>({s, t}, {});
}

}  // namespace fusedkd::torch_ext

at::Tensor fusedkd::similarity_preserving(const at::Tensor& student, const at::Tensor& teacher) {
  static const auto op = torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>(
      "fusedkd::similarity_preserving");
  return op.call(student, teacher);
}

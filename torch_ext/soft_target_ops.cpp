// kl_div, jsd, soft_mse, kd_loss: argument checks, the mapping of each onto the one fused internal
// op (_soft_target_forward), its body on any backend and its Meta kernel, and the C++ API.
// Autograd: GradientFromForward (autograd.h).
#include <cmath>
#include <string>

#include "autograd.h"
#include "common.h"
#include "fusedkd/torch.h"
#include "ops.h"
#include "outputs.h"

namespace fusedkd::torch_ext {
namespace {

void check_pair(const char* op, const at::Tensor& student, const at::Tensor& teacher,
                const std::optional<at::Tensor>& labels, double temperature) {
  check_logits(op, "student_logits", student);
  check_logits(op, "teacher_logits", teacher);
  TORCH_CHECK(student.sizes() == teacher.sizes(), op,
              ": student_logits and teacher_logits must have the same shape, got ", student.sizes(),
              " and ", teacher.sizes());
  check_same_device(op, "student_logits", student, "teacher_logits", teacher);
  check_temperature(op, temperature);
  if (labels && labels->defined()) {
    const at::Tensor& y = *labels;
    TORCH_CHECK(at::isIntegralType(y.scalar_type(), /*includeBool=*/false), op,
                ": labels must be an integer tensor, got ", y.scalar_type());
    TORCH_CHECK(y.sizes() == student.sizes().slice(0, student.dim() - 1), op,
                ": labels must have the leading shape of the logits ",
                student.sizes().slice(0, student.dim() - 1), ", got ", y.sizes());
    check_same_device(op, "labels", y, "student_logits", student);
  }
}

}  // namespace

Tensor3 soft_target_forward(const Backend& backend, const at::Tensor& student, const at::Tensor& teacher,
                            const std::optional<at::Tensor>& labels, double temperature, int64_t divergence,
                            double beta, int64_t ignore_index, double soft_scale, double hard_scale, bool per_row,
                            bool divide_by_valid_rows, bool grad_student, bool grad_teacher) {
  check_pair("fusedkd::_soft_target_forward", student, teacher, labels, temperature);
  TORCH_CHECK(divergence >= 0 && divergence <= static_cast<int64_t>(Divergence::MSE),
              "fusedkd::_soft_target_forward: unknown divergence ", divergence);
  const bool has_labels = labels && labels->defined();
  // The dtypes the kernels compute in: the inputs' own, or a promotion of them (never a demotion:
  // the loss dtype stays the spec's; the gradients are returned as their inputs' gradient buffers).
  // A float16 input whose gradient is wanted is read as float32 (its gradient buffer's dtype),
  // unless the backend's kernels read float16 and write that gradient in float32 themselves.
  const DTypePair used = backend.compute_dtypes(kernel_dtype(read_type(backend, student, grad_student)),
                                                kernel_dtype(read_type(backend, teacher, grad_teacher)));
  const at::Tensor student_used = converted_output(student, scalar_type(used.student));  // itself when unchanged
  const at::Tensor teacher_used = converted_output(teacher, scalar_type(used.teacher));
  const RowView s = row_view(student_used);
  const RowView t = row_view(teacher_used);
  const auto loss_options = student.options().dtype(loss_scalar_type({student.scalar_type(), teacher.scalar_type()}));
  const at::IntArrayRef leading = student.sizes().slice(0, student.dim() - 1);
  at::Tensor loss = per_row ? at::empty(leading, loss_options) : at::empty({}, loss_options);
  // Each gradient in the dtype the kernel writes it in (backend.h: the gradient buffer's dtype).
  at::Tensor grad_s = grad_student ? empty_output(student.sizes(), gradient_buffer_options(student_used))
                                   : at::empty({0}, student_used.options());
  at::Tensor grad_t = grad_teacher ? empty_output(teacher_used.sizes(), gradient_buffer_options(teacher_used))
                                   : at::empty({0}, teacher_used.options());
  const auto as_buffers = [&] {
    return std::tuple<at::Tensor, at::Tensor, at::Tensor>{loss, grad_s.to(gradient_buffer_type(student.scalar_type())),
                                                          grad_t.to(gradient_buffer_type(teacher.scalar_type()))};
  };
  if (s.rows == 0) {  // the sum over no rows, 0, but NaN for a NaN scale (apply_reduction: the mean of nothing)
    loss.fill_(std::isnan(soft_scale) ? std::nan("") : 0.0);
    return as_buffers();
  }
  const at::Tensor labels_long = has_labels ? labels->to(at::kLong).contiguous() : at::Tensor();

  SoftTargetArgs args;
  args.student = s.tensor.const_data_ptr();
  args.student_dtype = used.student;
  args.student_row_stride = s.row_stride;
  args.teacher = t.tensor.const_data_ptr();
  args.teacher_dtype = used.teacher;
  args.teacher_row_stride = t.row_stride;
  args.rows = s.rows;
  args.cols = s.cols;
  args.temperature = temperature;
  args.divergence = static_cast<Divergence>(divergence);
  args.beta = beta;
  args.labels = has_labels ? labels_long.const_data_ptr<int64_t>() : nullptr;
  args.ignore_index = ignore_index;
  args.soft_scale = soft_scale;
  args.hard_scale = hard_scale;
  args.divide_by_valid_rows = divide_by_valid_rows;
  args.per_row_loss = per_row;
  args.float16_gradients_in_float32 = backend.float16_gradients_in_float32;
  const at::Tensor workspace = bind_outputs(args, loss, grad_student, grad_s, grad_teacher, grad_t,
                                            soft_target_workspace_bytes, student.options());
  // The launcher's one data error, a label out of range (CPU), is kd_loss's: the public op with labels.
  launch_kernel(has_labels ? "fusedkd::kd_loss" : "fusedkd::_soft_target_forward", [&] { backend.soft_target(args); });
  return as_buffers();
}

Tensor3 soft_target_forward_meta(const at::Tensor& s, const at::Tensor& t, const std::optional<at::Tensor>& labels,
                                 double temperature, int64_t, double, int64_t, double, double, bool per_row, bool,
                                 bool grad_s, bool grad_t) {
  check_pair("fusedkd::_soft_target_forward", s, t, labels, temperature);
  const auto loss_options = s.options().dtype(loss_scalar_type({s.scalar_type(), t.scalar_type()}));
  const at::IntArrayRef leading = s.sizes().slice(0, s.dim() - 1);
  return {per_row ? at::empty(leading, loss_options) : at::empty({}, loss_options),
          at::empty(grad_s ? s.sizes() : at::IntArrayRef{0}, gradient_buffer_options(s)),
          at::empty(grad_t ? t.sizes() : at::IntArrayRef{0}, gradient_buffer_options(t))};
}

namespace {

// ---------------------------------------------------------------- public ops -> one kernel

// What the fused kernel is asked to compute for one public op call.
struct LossSpec {
  std::optional<at::Tensor> labels;
  double temperature = 1.0;
  Divergence divergence = Divergence::ForwardKL;
  double beta = 0.5;
  int64_t ignore_index = -100;
  double soft_scale = 1.0;
  double hard_scale = 0.0;
  bool per_row = false;
  bool divide_by_valid_rows = true;
};

// kl_div, jsd and soft_mse: the reduction over the rows of logits `s`. "mean" and "batchmean" of no
// rows are 0 / 0 = NaN, as torch's (kd_loss's n = 0 is 0 instead: the spec's rule).
void apply_reduction(const char* op, c10::string_view reduction, const at::Tensor& s, LossSpec& spec) {
  switch (parse_reduction(op, reduction, /*allow_batchmean=*/true)) {
    case Reduction::None:
      spec.per_row = true;
      spec.divide_by_valid_rows = false;
      return;
    case Reduction::Sum: spec.divide_by_valid_rows = false; return;
    case Reduction::Mean: spec.soft_scale /= static_cast<double>(s.size(-1)); break;  // torch's mean: / (R * V)
    case Reduction::BatchMean: break;
  }
  if (s.sym_numel() == 0) spec.soft_scale = std::nan("");  // (a guard, not a sync, under torch.compile)
}

void check_beta(const char* op, double beta) {
  TORCH_CHECK(beta >= 0.0 && beta <= 1.0, op, ": beta must be in [0, 1], got ", beta);
}

// beta = 0 is KL(p || q), beta = 1 is KL(q || p) (the generalized JSD's end points).
Divergence jsd_divergence(double beta) {
  if (beta == 0.0) return Divergence::ForwardKL;
  if (beta == 1.0) return Divergence::ReverseKL;
  return Divergence::JSD;
}

LossSpec kl_div_spec(const at::Tensor& s, const at::Tensor& t, double temperature, c10::string_view reduction,
                     bool reverse) {
  const char* op = "fusedkd::kl_div";
  check_pair(op, s, t, std::nullopt, temperature);
  LossSpec spec;
  spec.temperature = temperature;
  spec.divergence = reverse ? Divergence::ReverseKL : Divergence::ForwardKL;
  apply_reduction(op, reduction, s, spec);
  return spec;
}

LossSpec jsd_spec(const at::Tensor& s, const at::Tensor& t, double temperature, double beta,
                  c10::string_view reduction) {
  const char* op = "fusedkd::jsd";
  check_pair(op, s, t, std::nullopt, temperature);
  check_beta(op, beta);
  LossSpec spec;
  spec.temperature = temperature;
  spec.divergence = jsd_divergence(beta);
  spec.beta = beta;
  apply_reduction(op, reduction, s, spec);
  return spec;
}

LossSpec soft_mse_spec(const at::Tensor& s, const at::Tensor& t, double temperature, c10::string_view reduction) {
  const char* op = "fusedkd::soft_mse";
  check_pair(op, s, t, std::nullopt, temperature);
  LossSpec spec;
  spec.temperature = temperature;
  spec.divergence = Divergence::MSE;
  apply_reduction(op, reduction, s, spec);
  return spec;
}

LossSpec kd_loss_spec(const at::Tensor& s, const at::Tensor& t, const std::optional<at::Tensor>& labels,
                      double temperature, double soft_weight, double hard_weight, c10::string_view divergence,
                      double beta, int64_t ignore_index, bool t2_scale) {
  const char* op = "fusedkd::kd_loss";
  check_pair(op, s, t, labels, temperature);
  check_beta(op, beta);
  TORCH_CHECK(std::isfinite(soft_weight), op, ": soft_weight must be finite, got ", soft_weight);
  TORCH_CHECK(std::isfinite(hard_weight), op, ": hard_weight must be finite, got ", hard_weight);
  const bool has_labels = labels && labels->defined();
  TORCH_CHECK(hard_weight == 0.0 || has_labels, op, ": hard_weight != 0 needs labels");
  LossSpec spec;
  spec.labels = has_labels ? labels : std::nullopt;
  spec.temperature = temperature;
  spec.beta = beta;
  spec.ignore_index = ignore_index;
  spec.soft_scale = soft_weight * (t2_scale ? temperature * temperature : 1.0);
  spec.hard_scale = hard_weight;
  if (divergence == "kl") {
    spec.divergence = Divergence::ForwardKL;
  } else if (divergence == "reverse_kl") {
    spec.divergence = Divergence::ReverseKL;
  } else if (divergence == "jsd") {
    spec.divergence = jsd_divergence(beta);
  } else if (divergence == "mse") {
    spec.divergence = Divergence::MSE;
    spec.soft_scale /= static_cast<double>(s.size(-1));  // sum / (n * V)
  } else {
    TORCH_CHECK(false, op, ": divergence must be one of \"kl\", \"reverse_kl\", \"jsd\", \"mse\", got \"",
                std::string(divergence), "\"");
  }
  return spec;
}

// The autograd of the four ops: the one internal op, one gradient buffer per input.
struct SoftTargetLoss : DirectGradients {
  static constexpr const char* kForwardOp = "fusedkd::_soft_target_forward";
};

// The op's value for the spec (inputs student and teacher; the rest are the internal op's options).
at::Tensor run_soft_target(const at::Tensor& s, const at::Tensor& t, const LossSpec& spec) {
  return run_loss<SoftTargetLoss>(
      {s, t}, {spec.labels, spec.temperature, static_cast<int64_t>(spec.divergence), spec.beta, spec.ignore_index,
               spec.soft_scale, spec.hard_scale, spec.per_row, spec.divide_by_valid_rows});
}

}  // namespace

at::Tensor kl_div_op(const at::Tensor& s, const at::Tensor& t, double temperature, c10::string_view reduction,
                     bool reverse) {
  return run_soft_target(s, t, kl_div_spec(s, t, temperature, reduction, reverse));
}
at::Tensor jsd_op(const at::Tensor& s, const at::Tensor& t, double temperature, double beta,
                  c10::string_view reduction) {
  return run_soft_target(s, t, jsd_spec(s, t, temperature, beta, reduction));
}
at::Tensor soft_mse_op(const at::Tensor& s, const at::Tensor& t, double temperature, c10::string_view reduction) {
  return run_soft_target(s, t, soft_mse_spec(s, t, temperature, reduction));
}
at::Tensor kd_loss_op(const at::Tensor& s, const at::Tensor& t, const std::optional<at::Tensor>& labels,
                      double temperature, double soft_weight, double hard_weight, c10::string_view divergence,
                      double beta, int64_t ignore_index, bool t2_scale) {
  return run_soft_target(s, t,
                         kd_loss_spec(s, t, labels, temperature, soft_weight, hard_weight, divergence, beta,
                                      ignore_index, t2_scale));
}

}  // namespace fusedkd::torch_ext

namespace fusedkd {

at::Tensor kl_div(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature,
                  const std::string& reduction, bool reverse) {
  static const auto op = torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double,
                                                       c10::string_view, bool)>("fusedkd::kl_div");
  return op.call(student_logits, teacher_logits, temperature, reduction, reverse);
}

at::Tensor jsd(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature, double beta,
               const std::string& reduction) {
  static const auto op = torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double, double,
                                                       c10::string_view)>("fusedkd::jsd");
  return op.call(student_logits, teacher_logits, temperature, beta, reduction);
}

at::Tensor soft_mse(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature,
                    const std::string& reduction) {
  static const auto op =
      torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::string_view)>(
          "fusedkd::soft_mse");
  return op.call(student_logits, teacher_logits, temperature, reduction);
}

at::Tensor kd_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                   const std::optional<at::Tensor>& labels, double temperature, double soft_weight,
                   double hard_weight, const std::string& divergence, double beta, int64_t ignore_index,
                   bool t2_scale) {
  static const auto op = torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                       const std::optional<at::Tensor>&, double, double, double,
                                                       c10::string_view, double, int64_t, bool)>("fusedkd::kd_loss");
  return op.call(student_logits, teacher_logits, labels, temperature, soft_weight, hard_weight, divergence, beta,
                 ignore_index, t2_scale);
}

}  // namespace fusedkd

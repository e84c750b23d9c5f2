// kl_div, jsd, soft_mse, kd_loss: argument checks, the mapping of each onto the one fused kernel,
// the CPU and Meta kernels, autograd, and the C++ API.
//
// Autograd: the forward computes the gradients in the same pass and keeps them; the backward
// scales them in place by grad_output (rows whose factor is exactly 1 are not touched) and hands
// them over, dropping its own reference so that no copy is made. A second backward through the
// same graph (retain_graph=True) recomputes them from the saved inputs.
#include "soft_target_ops.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "common.h"
#include "fusedkd/torch.h"

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_target_forward_op(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& labels,
    double temperature, int64_t divergence, double beta, int64_t ignore_index, double soft_scale,
    double hard_scale, bool per_row, bool divide_by_valid_rows, bool grad_student, bool grad_teacher,
    const SoftTargetBackend& backend) {
  check_pair("fusedkd::_soft_target_forward", student, teacher, labels, temperature);
  TORCH_CHECK(divergence >= 0 && divergence <= static_cast<int64_t>(Divergence::MSE),
              "fusedkd::_soft_target_forward: unknown divergence ", divergence);
  const bool has_labels = labels && labels->defined();
  // The dtypes the kernels compute in: the inputs' own, or a promotion of them (never a demotion:
  // the loss dtype stays the spec's, and the gradients are cast back to their inputs' dtypes).
  const DType student_dtype = kernel_dtype(student.scalar_type()), teacher_dtype = kernel_dtype(teacher.scalar_type());
  const DTypePair used = backend.compute_dtypes(student_dtype, teacher_dtype);
  const at::Tensor student_used = student.to(scalar_type(used.student));  // the same tensor when unchanged
  const at::Tensor teacher_used = teacher.to(scalar_type(used.teacher));
  const RowView s = row_view(student_used);
  const RowView t = row_view(teacher_used);
  const auto loss_options = student.options().dtype(scalar_type(loss_dtype(student_dtype, teacher_dtype)));
  const at::IntArrayRef leading = student.sizes().slice(0, student.dim() - 1);
  at::Tensor loss = per_row ? at::empty(leading, loss_options) : at::empty({}, loss_options);
  const auto contiguous = at::MemoryFormat::Contiguous;
  at::Tensor grad_s = grad_student ? at::empty(student.sizes(), student_used.options().memory_format(contiguous))
                                   : at::empty({0}, student_used.options());
  at::Tensor grad_t = grad_teacher ? at::empty(teacher_used.sizes(), teacher_used.options().memory_format(contiguous))
                                   : at::empty({0}, teacher_used.options());
  const auto in_input_dtypes = [&] {
    return std::tuple<at::Tensor, at::Tensor, at::Tensor>{loss, grad_s.to(student.scalar_type()),
                                                          grad_t.to(teacher.scalar_type())};
  };
  if (s.rows == 0) {
    loss.zero_();
    return in_input_dtypes();
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
  args.loss = loss.mutable_data_ptr();
  args.grad_student = grad_student ? grad_s.mutable_data_ptr() : nullptr;
  args.grad_teacher = grad_teacher ? grad_t.mutable_data_ptr() : nullptr;
  const at::Tensor workspace = at::empty({static_cast<int64_t>(soft_target_workspace_bytes(args))},
                                         student.options().dtype(at::kByte));
  args.workspace = workspace.mutable_data_ptr();
  launch_kernel("fusedkd::_soft_target_forward", [&] { backend.loss(args); });
  return in_input_dtypes();
}

namespace {

// ---------------------------------------------------------------- public ops -> one kernel

// What the fused kernel is asked to compute for one public op call.
struct LossSpec {
  double temperature = 1.0;
  Divergence divergence = Divergence::ForwardKL;
  double beta = 0.5;
  int64_t ignore_index = -100;
  double soft_scale = 1.0;
  double hard_scale = 0.0;
  bool per_row = false;
  bool divide_by_valid_rows = true;
};

void apply_reduction(const char* op, c10::string_view reduction, int64_t cols, LossSpec& spec) {
  if (reduction == "none") {
    spec.per_row = true;
    spec.divide_by_valid_rows = false;
  } else if (reduction == "sum") {
    spec.divide_by_valid_rows = false;
  } else if (reduction == "mean") {
    spec.soft_scale /= static_cast<double>(cols);  // torch's elementwise mean: / (R * V)
  } else if (reduction == "batchmean") {
  } else {
    TORCH_CHECK(false, op, ": reduction must be one of \"none\", \"sum\", \"mean\", \"batchmean\", got \"",
                std::string(reduction), "\"");
  }
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
  apply_reduction(op, reduction, s.size(-1), spec);
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
  apply_reduction(op, reduction, s.size(-1), spec);
  return spec;
}

LossSpec soft_mse_spec(const at::Tensor& s, const at::Tensor& t, double temperature, c10::string_view reduction) {
  const char* op = "fusedkd::soft_mse";
  check_pair(op, s, t, std::nullopt, temperature);
  LossSpec spec;
  spec.temperature = temperature;
  spec.divergence = Divergence::MSE;
  apply_reduction(op, reduction, s.size(-1), spec);
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

using ForwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, int64_t, double, int64_t,
    double, double, bool, bool, bool, bool);

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_forward(const at::Tensor& s, const at::Tensor& t,
                                                            const std::optional<at::Tensor>& labels,
                                                            const LossSpec& spec, bool grad_s, bool grad_t) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fusedkd::_soft_target_forward", "")
                             .typed<ForwardSignature>();
  return op.call(s, t, labels, spec.temperature, static_cast<int64_t>(spec.divergence), spec.beta,
                 spec.ignore_index, spec.soft_scale, spec.hard_scale, spec.per_row, spec.divide_by_valid_rows,
                 grad_s, grad_t);
}

class SoftTargetFunction : public torch::autograd::Function<SoftTargetFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& student,
                            const at::Tensor& teacher, const std::optional<at::Tensor>& labels,
                            const LossSpec& spec, bool need_student, bool need_teacher) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad_s, grad_t] = call_forward(student, teacher, labels, spec, need_student, need_teacher);
    ctx->save_for_backward({student, teacher});
    // The gradients live in saved_data so that the backward can drop this reference.
    ctx->saved_data["grad_student"] = need_student ? c10::IValue(grad_s) : c10::IValue();
    ctx->saved_data["grad_teacher"] = need_teacher ? c10::IValue(grad_t) : c10::IValue();
    ctx->saved_data["labels"] = labels && labels->defined() ? c10::IValue(*labels) : c10::IValue();
    ctx->saved_data["need_student"] = need_student;
    ctx->saved_data["need_teacher"] = need_teacher;
    ctx->saved_data["temperature"] = spec.temperature;
    ctx->saved_data["divergence"] = static_cast<int64_t>(spec.divergence);
    ctx->saved_data["beta"] = spec.beta;
    ctx->saved_data["ignore_index"] = spec.ignore_index;
    ctx->saved_data["soft_scale"] = spec.soft_scale;
    ctx->saved_data["hard_scale"] = spec.hard_scale;
    ctx->saved_data["per_row"] = spec.per_row;
    ctx->saved_data["divide_by_valid_rows"] = spec.divide_by_valid_rows;
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto& data = ctx->saved_data;
    const bool need_student = data["need_student"].toBool();
    const bool need_teacher = data["need_teacher"].toBool();
    at::Tensor grad_s = data["grad_student"].isTensor() ? data["grad_student"].toTensor() : at::Tensor();
    at::Tensor grad_t = data["grad_teacher"].isTensor() ? data["grad_teacher"].toTensor() : at::Tensor();
    const bool first_backward = (!need_student || grad_s.defined()) && (!need_teacher || grad_t.defined());
    if (first_backward) {
      data["grad_student"] = c10::IValue();
      data["grad_teacher"] = c10::IValue();
    } else {  // retain_graph: the first backward handed the buffers over; compute them again
      const auto saved = ctx->get_saved_variables();
      LossSpec spec;
      spec.temperature = data["temperature"].toDouble();
      spec.divergence = static_cast<Divergence>(data["divergence"].toInt());
      spec.beta = data["beta"].toDouble();
      spec.ignore_index = data["ignore_index"].toInt();
      spec.soft_scale = data["soft_scale"].toDouble();
      spec.hard_scale = data["hard_scale"].toDouble();
      spec.per_row = data["per_row"].toBool();
      spec.divide_by_valid_rows = data["divide_by_valid_rows"].toBool();
      const std::optional<at::Tensor> labels =
          data["labels"].isTensor() ? std::optional<at::Tensor>(data["labels"].toTensor()) : std::nullopt;
      at::AutoDispatchBelowADInplaceOrView guard;
      auto result = call_forward(saved[0], saved[1], labels, spec, need_student, need_teacher);
      grad_s = std::get<1>(result);
      grad_t = std::get<2>(result);
    }
    const at::Tensor& grad_output = grad_outputs[0];
    if (need_student) scale_gradient(grad_s, grad_output);
    if (need_teacher) scale_gradient(grad_t, grad_output);
    return {need_student ? grad_s : at::Tensor(), need_teacher ? grad_t : at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The op's value: through autograd when a gradient is wanted, else the fused forward alone.
at::Tensor run_loss(const at::Tensor& s, const at::Tensor& t, const std::optional<at::Tensor>& labels,
                    const LossSpec& spec) {
  const bool grad_mode = at::GradMode::is_enabled();
  const bool need_student = grad_mode && s.requires_grad();
  const bool need_teacher = grad_mode && t.requires_grad();
  if (!need_student && !need_teacher) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return std::get<0>(call_forward(s, t, labels, spec, false, false));
  }
  return SoftTargetFunction::apply(s, t, labels, spec, need_student, need_teacher);
}

// Public op kernels. The same functions serve the Autograd key and, below it,
// CompositeExplicitAutograd (CPU, CUDA, Meta; inference mode): there no input requires grad.
at::Tensor kl_div_kernel(const at::Tensor& s, const at::Tensor& t, double temperature, c10::string_view reduction,
                         bool reverse) {
  return run_loss(s, t, std::nullopt, kl_div_spec(s, t, temperature, reduction, reverse));
}
at::Tensor jsd_kernel(const at::Tensor& s, const at::Tensor& t, double temperature, double beta,
                      c10::string_view reduction) {
  return run_loss(s, t, std::nullopt, jsd_spec(s, t, temperature, beta, reduction));
}
at::Tensor soft_mse_kernel(const at::Tensor& s, const at::Tensor& t, double temperature, c10::string_view reduction) {
  return run_loss(s, t, std::nullopt, soft_mse_spec(s, t, temperature, reduction));
}
at::Tensor kd_loss_kernel(const at::Tensor& s, const at::Tensor& t, const std::optional<at::Tensor>& labels,
                          double temperature, double soft_weight, double hard_weight, c10::string_view divergence,
                          double beta, int64_t ignore_index, bool t2_scale) {
  return run_loss(s, t, labels,
                  kd_loss_spec(s, t, labels, temperature, soft_weight, hard_weight, divergence, beta, ignore_index,
                               t2_scale));
}

// ---------------------------------------------------------------- CPU and Meta kernels

const SoftTargetBackend& cpu_backend() {
  static const SoftTargetBackend backend{
      [](const SoftTargetArgs& args) { soft_target_loss_cpu(args, torch_cpu_executor()); },
      [](DType student, DType teacher) { return DTypePair{student, teacher}; }};
  return backend;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(
    const at::Tensor& s, const at::Tensor& t, const std::optional<at::Tensor>& labels, double temperature,
    int64_t divergence, double beta, int64_t ignore_index, double soft_scale, double hard_scale, bool per_row,
    bool divide, bool grad_s, bool grad_t) {
  return soft_target_forward_op(s, t, labels, temperature, divergence, beta, ignore_index, soft_scale, hard_scale,
                                per_row, divide, grad_s, grad_t, cpu_backend());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_meta(
    const at::Tensor& s, const at::Tensor& t, const std::optional<at::Tensor>& labels, double temperature,
    int64_t, double, int64_t, double, double, bool per_row, bool, bool grad_s, bool grad_t) {
  check_pair("fusedkd::_soft_target_forward", s, t, labels, temperature);
  const auto loss_options =
      s.options().dtype(scalar_type(loss_dtype(kernel_dtype(s.scalar_type()), kernel_dtype(t.scalar_type()))));
  const at::IntArrayRef leading = s.sizes().slice(0, s.dim() - 1);
  return {per_row ? at::empty(leading, loss_options) : at::empty({}, loss_options),
          grad_s ? at::empty(s.sizes(), s.options()) : at::empty({0}, s.options()),
          grad_t ? at::empty(t.sizes(), t.options()) : at::empty({0}, t.options())};
}


c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::string_view, bool)> kl_div_handle() {
  return c10::Dispatcher::singleton().findSchemaOrThrow("fusedkd::kl_div", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::string_view, bool)>();
}

}  // namespace
}  // namespace fusedkd::torch_ext

namespace fusedkd {

at::Tensor kl_div(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature,
                  const std::string& reduction, bool reverse) {
  static const auto op = torch_ext::kl_div_handle();
  return op.call(student_logits, teacher_logits, temperature, reduction, reverse);
}

at::Tensor jsd(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature, double beta,
               const std::string& reduction) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fusedkd::jsd", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, double, c10::string_view)>();
  return op.call(student_logits, teacher_logits, temperature, beta, reduction);
}

at::Tensor soft_mse(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature,
                    const std::string& reduction) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fusedkd::soft_mse", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::string_view)>();
  return op.call(student_logits, teacher_logits, temperature, reduction);
}

at::Tensor kd_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                   const std::optional<at::Tensor>& labels, double temperature, double soft_weight,
                   double hard_weight, const std::string& divergence, double beta, int64_t ignore_index,
                   bool t2_scale) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fusedkd::kd_loss", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, double,
                        double, c10::string_view, double, int64_t, bool)>();
  return op.call(student_logits, teacher_logits, labels, temperature, soft_weight, hard_weight, divergence, beta,
                 ignore_index, t2_scale);
}

}  // namespace fusedkd

TORCH_LIBRARY_IMPL(fusedkd, CPU, m) {
  using namespace fusedkd::torch_ext;
  m.impl("_soft_target_forward", &forward_cpu);
}

TORCH_LIBRARY_IMPL(fusedkd, Meta, m) {
  using namespace fusedkd::torch_ext;
  m.impl("_soft_target_forward", &forward_meta);
}

TORCH_LIBRARY_IMPL(fusedkd, Autograd, m) {
  using namespace fusedkd::torch_ext;
  m.impl("kl_div", &kl_div_kernel);
  m.impl("jsd", &jsd_kernel);
  m.impl("soft_mse", &soft_mse_kernel);
  m.impl("kd_loss", &kd_loss_kernel);
}

TORCH_LIBRARY_IMPL(fusedkd, CompositeExplicitAutograd, m) {
  using namespace fusedkd::torch_ext;
  m.impl("kl_div", &kl_div_kernel);
  m.impl("jsd", &jsd_kernel);
  m.impl("soft_mse", &soft_mse_kernel);
  m.impl("kd_loss", &kd_loss_kernel);
}

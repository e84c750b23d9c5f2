// feature_mse, attention_transfer, projected_feature_mse, similarity_preserving: argument checks,
// layouts and dtypes, the CPU and Meta kernels of the internal ops, autograd, and the C++ API.
//
// Autograd follows the soft-target losses: feature_mse, attention_transfer and
// similarity_preserving write their gradients in the forward (as if grad_output were 1) and the
// backward scales them in place (fusedkd::_scale_grad_, common.h); projected_feature_mse keeps dL/dy from the forward (in the buffer
// that held y) and runs the GEMMs of the backward once grad_output is known.
#include "feature_ops.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <vector>

#include "common.h"
#include "fusedkd/torch.h"

namespace fusedkd::torch_ext {
namespace {

bool is_float_dtype(const at::Tensor& x) {
  const at::ScalarType type = x.scalar_type();
  return type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16;
}

void check_features(const char* op, const char* name, const at::Tensor& x, int64_t min_dim) {
  TORCH_CHECK(x.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(is_float_dtype(x), op, ": ", name, " must be float32, float64, float16 or bfloat16, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= min_dim, op, ": ", name, " must have at least ", min_dim, " dims, got shape ", x.sizes());
}

at::ScalarType loss_dtype(std::initializer_list<at::ScalarType> types) {
  for (const at::ScalarType type : types)
    if (type == at::kDouble) return at::kDouble;
  return at::kFloat;
}

int64_t spatial_size(const at::Tensor& x) {
  int64_t size = 1;
  for (int64_t d = 2; d < x.dim(); ++d) size *= x.size(d);
  return size;
}

// Strides of a dense [N, C, *spatial] tensor: channels-first (contiguous) or channels-last.
std::vector<int64_t> layout_strides(at::IntArrayRef sizes, bool channels_last) {
  std::vector<int64_t> strides(sizes.size());
  int64_t next = channels_last ? sizes[1] : 1;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= (channels_last ? 2 : 0); --d) {
    strides[d] = next;
    next *= sizes[d] > 1 ? sizes[d] : 1;
  }
  if (channels_last) {
    strides[1] = 1;
    strides[0] = next;
  }
  return strides;
}

bool has_layout(const at::Tensor& x, bool channels_last) {
  const std::vector<int64_t> expected = layout_strides(x.sizes(), channels_last);
  for (int64_t d = 0; d < x.dim(); ++d)
    if (x.size(d) > 1 && x.stride(d) != expected[d]) return false;
  return true;
}

// x as a dense tensor of the given layout (x itself when it already is one).
at::Tensor to_layout(const at::Tensor& x, bool channels_last, at::ScalarType dtype) {
  if (x.scalar_type() == dtype && has_layout(x, channels_last)) return x;
  return at::empty_strided(x.sizes(), layout_strides(x.sizes(), channels_last), x.options().dtype(dtype)).copy_(x);
}

at::Tensor empty_layout(at::IntArrayRef sizes, bool channels_last, const at::TensorOptions& options) {
  return at::empty_strided(sizes, layout_strides(sizes, channels_last), options);
}

// Channels-last when x is stored so (and more than one channel makes it differ), else channels-first.
bool prefers_channels_last(const at::Tensor& x) {
  return x.dim() >= 3 && x.size(1) > 1 && !has_layout(x, false) && has_layout(x, true);
}

at::Tensor maybe_empty(bool wanted, const std::function<at::Tensor()>& make, const at::Tensor& like) {
  return wanted ? make() : at::empty({0}, like.options());
}

void check_pair_device(const char* op, const at::Tensor& s, const at::Tensor& t) {
  check_same_device(op, "student", s, "teacher", t);
}

// The factor a reduction puts on the summed loss; "mean" and "batchmean" of nothing are NaN (as
// torch's mean of an empty tensor), which the ops write after the kernel's 0.
double reduction_factor(int64_t reduction, double elements, double batch) {
  switch (static_cast<Reduction>(reduction)) {
    case Reduction::None:
    case Reduction::Sum: return 1.0;
    case Reduction::Mean: return elements > 0 ? 1.0 / elements : std::nan("");
    case Reduction::BatchMean: return batch > 0 ? 1.0 / batch : std::nan("");
  }
  TORCH_CHECK(false, "fusedkd: unknown reduction code ", reduction);
}

// Runs the kernel with the reduction's factor (1 when it is NaN), then makes such a loss NaN.
template <typename Launch>
void launch_reduced(const char* op, double factor, at::Tensor& loss, double& scale, const Launch& launch) {
  scale = std::isnan(factor) ? 1.0 : factor;
  launch_kernel(op, launch);
  if (std::isnan(factor)) loss.fill_(std::nan(""));
}

}  // namespace

// ---------------------------------------------------------------- internal ops (any backend)

Tensor3 feature_mse_forward_op(const at::Tensor& student, const at::Tensor& teacher, int64_t reduction,
                               bool grad_student, bool grad_teacher, const FeatureBackend& backend) {
  const char* op = "fusedkd::feature_mse";
  const bool elementwise = reduction == static_cast<int64_t>(Reduction::None);
  check_features(op, "student", student, 0);
  check_features(op, "teacher", teacher, 0);
  TORCH_CHECK(student.sizes() == teacher.sizes(), op, ": student and teacher must have the same shape, got ",
              student.sizes(), " and ", teacher.sizes());
  check_pair_device(op, student, teacher);
  // Memory order: the student's when it is dense, with the teacher brought to the same strides. The
  // dtypes: the inputs' own or a promotion of them (the loss dtype stays the spec's, the gradients
  // are cast back to their inputs' dtypes).
  const DTypePair used = backend.compute_dtypes(kernel_dtype(student.scalar_type()), kernel_dtype(teacher.scalar_type()));
  const at::Tensor s = (student.is_non_overlapping_and_dense() ? student : student.contiguous())
                           .to(scalar_type(used.student));  // strides kept
  const at::ScalarType teacher_type = scalar_type(used.teacher);
  at::Tensor t = teacher;
  if (teacher_type != teacher.scalar_type() || !teacher.is_non_overlapping_and_dense() ||
      teacher.strides() != s.strides())
    t = at::empty_strided(s.sizes(), s.strides(), teacher.options().dtype(teacher_type)).copy_(teacher);
  const auto loss_options = s.options().dtype(loss_dtype({s.scalar_type(), t.scalar_type()}));
  at::Tensor loss = elementwise ? at::empty_strided(s.sizes(), s.strides(), loss_options) : at::empty({}, loss_options);
  at::Tensor gs = maybe_empty(grad_student, [&] { return at::empty_strided(s.sizes(), s.strides(), s.options()); }, s);
  at::Tensor gt = maybe_empty(grad_teacher, [&] { return at::empty_strided(t.sizes(), t.strides(), t.options()); }, t);

  FeatureMseArgs args;
  args.student = s.const_data_ptr();
  args.student_dtype = kernel_dtype(s.scalar_type());
  args.teacher = t.const_data_ptr();
  args.teacher_dtype = kernel_dtype(t.scalar_type());
  args.numel = s.numel();
  args.elementwise_loss = elementwise;
  args.loss = loss.mutable_data_ptr();
  args.grad_student = grad_student ? gs.mutable_data_ptr() : nullptr;
  args.grad_teacher = grad_teacher ? gt.mutable_data_ptr() : nullptr;
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(feature_mse_workspace_bytes(args))}, s.options().dtype(at::kByte));
  args.workspace = workspace.mutable_data_ptr();
  launch_reduced(op, reduction_factor(reduction, static_cast<double>(s.numel()), 0), loss, args.scale,
                 [&] { backend.mse(args); });
  return {loss, gs.to(student.scalar_type()), gt.to(teacher.scalar_type())};
}

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
  check_pair_device(op, s, t);
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

Tensor3 attention_transfer_forward_op(const at::Tensor& student, const at::Tensor& teacher, double p,
                                      int64_t reduction, bool grad_student, bool grad_teacher,
                                      const FeatureBackend& backend) {
  const char* op = "fusedkd::attention_transfer";
  const bool per_row = reduction == static_cast<int64_t>(Reduction::None);
  check_attention_pair(op, student, teacher, p);
  const bool s_last = prefers_channels_last(student), t_last = prefers_channels_last(teacher);
  const at::Tensor s = to_layout(student, s_last, student.scalar_type());
  const at::Tensor t = to_layout(teacher, t_last, teacher.scalar_type());
  const auto loss_options = s.options().dtype(loss_dtype({s.scalar_type(), t.scalar_type()}));
  const int64_t batch = s.size(0);
  at::Tensor loss = per_row ? at::empty({batch}, loss_options) : at::empty({}, loss_options);
  at::Tensor gs = maybe_empty(grad_student, [&] { return empty_layout(s.sizes(), s_last, s.options()); }, s);
  at::Tensor gt = maybe_empty(grad_teacher, [&] { return empty_layout(t.sizes(), t_last, t.options()); }, t);

  AttentionTransferArgs args;
  args.student = feature_map(s, s_last);
  args.teacher = feature_map(t, t_last);
  args.batch = batch;
  args.spatial = spatial_size(s);
  args.p = p;
  args.per_row_loss = per_row;
  args.loss = loss.mutable_data_ptr();
  args.grad_student = grad_student ? gs.mutable_data_ptr() : nullptr;
  args.grad_teacher = grad_teacher ? gt.mutable_data_ptr() : nullptr;
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(attention_transfer_workspace_bytes(args))}, s.options().dtype(at::kByte));
  args.workspace = workspace.mutable_data_ptr();
  const double batch_size = static_cast<double>(batch);
  launch_reduced(op, reduction_factor(reduction, batch_size * static_cast<double>(args.spatial), batch_size), loss,
                 args.scale, [&] { backend.attention(args); });
  return {loss, gs, gt};
}

namespace {

int64_t features_per_sample(const at::Tensor& x) {
  int64_t count = 1;
  for (int64_t d = 1; d < x.dim(); ++d) count *= x.size(d);
  return count;
}

// x as [N, D] rows of `dtype` with contiguous elements.
at::Tensor feature_rows(const at::Tensor& x, at::ScalarType dtype) {
  at::Tensor rows = x.to(dtype).reshape({x.size(0), features_per_sample(x)});
  if (rows.size(1) > 1 && (rows.stride(1) != 1 || rows.stride(0) < rows.size(1))) rows = rows.contiguous();
  if (rows.size(1) == 1 && rows.stride(0) < 1) rows = rows.contiguous();
  return rows;
}

int64_t row_stride(const at::Tensor& rows) { return rows.size(0) > 1 ? rows.stride(0) : rows.size(1); }

}  // namespace

Tensor3 similarity_preserving_forward_op(const at::Tensor& student, const at::Tensor& teacher, bool grad_student,
                                         bool grad_teacher, const FeatureBackend& backend) {
  const char* op = "fusedkd::similarity_preserving";
  check_features(op, "student", student, 1);
  check_features(op, "teacher", teacher, 1);
  check_pair_device(op, student, teacher);
  TORCH_CHECK(student.size(0) == teacher.size(0), op, ": student and teacher must have the same batch size, got ",
              student.sizes(), " and ", teacher.sizes());
  const int64_t batch = student.size(0);
  TORCH_CHECK(features_per_sample(student) >= 1 && features_per_sample(teacher) >= 1, op,
              ": every sample needs at least one feature, got ", student.sizes(), " and ", teacher.sizes());
  const at::ScalarType compute = loss_dtype({student.scalar_type(), teacher.scalar_type()});
  const at::Tensor fs = feature_rows(student, compute), ft = feature_rows(teacher, compute);
  at::Tensor loss = at::empty({}, fs.options());
  at::Tensor gs = maybe_empty(grad_student, [&] { return at::empty(fs.sizes(), fs.options()); }, fs);
  at::Tensor gt = maybe_empty(grad_teacher, [&] { return at::empty(ft.sizes(), ft.options()); }, ft);

  SimilarityPreservingArgs args;
  args.student = fs.const_data_ptr();
  args.student_cols = fs.size(1);
  args.student_row_stride = row_stride(fs);
  args.teacher = ft.const_data_ptr();
  args.teacher_cols = ft.size(1);
  args.teacher_row_stride = row_stride(ft);
  args.rows = batch;
  args.is_double = compute == at::kDouble;
  args.loss = loss.mutable_data_ptr();
  args.grad_student = grad_student ? gs.mutable_data_ptr() : nullptr;
  args.grad_teacher = grad_teacher ? gt.mutable_data_ptr() : nullptr;
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(similarity_preserving_workspace_bytes(args))}, fs.options().dtype(at::kByte));
  args.workspace = workspace.mutable_data_ptr();
  launch_kernel(op, [&] { backend.similarity(args); });
  if (grad_student) gs = gs.reshape(student.sizes()).to(student.scalar_type());
  if (grad_teacher) gt = gt.reshape(teacher.sizes()).to(teacher.scalar_type());
  return {loss, gs, gt};
}

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

Tensor3 projected_feature_mse_forward_op(const at::Tensor& student, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias, const at::Tensor& teacher,
                                         int64_t reduction, bool keep_gradient, bool grad_teacher,
                                         const FeatureBackend& backend) {
  const char* op = "fusedkd::projected_feature_mse";
  const bool elementwise = reduction == static_cast<int64_t>(Reduction::None);
  check_projection(op, student, weight, bias);
  check_features(op, "teacher", teacher, 2);
  check_pair_device(op, student, teacher);
  const std::vector<int64_t> sizes = projected_sizes(student, weight.size(0));
  TORCH_CHECK(teacher.sizes() == at::IntArrayRef(sizes), op, ": teacher must be ", at::IntArrayRef(sizes),
              " (the student's shape with C_t = weight.size(0) channels), got ", teacher.sizes());
  const bool has_bias = bias && bias->defined();
  const at::ScalarType compute =
      loss_dtype({student.scalar_type(), weight.scalar_type(), teacher.scalar_type(),
                  has_bias ? bias->scalar_type() : at::kFloat});
  const Projection p = make_projection(student, weight, compute);
  const at::ScalarType teacher_type =
      scalar_type(backend.compute_dtypes(kernel_dtype(compute), kernel_dtype(teacher.scalar_type())).teacher);
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
                 [&] { backend.projected(args); });
  if (grad_teacher && gt.scalar_type() != teacher.scalar_type()) gt = gt.to(teacher.scalar_type());
  return {loss, keep_gradient ? projection : at::empty({0}, options), gt};
}

Tensor3 projection_backward_op(const at::Tensor& grad_projection, const at::Tensor& student, const at::Tensor& weight,
                               bool grad_student, bool grad_weight, bool grad_bias, const FeatureBackend& backend) {
  const char* op = "fusedkd::_projection_backward";
  check_projection(op, student, weight, std::nullopt);
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

namespace {

// ---------------------------------------------------------------- autograd

enum class FeatureLoss : int64_t { Mse = 0, Attention = 1, Similarity = 2 };

struct FeatureSpec {
  FeatureLoss kind = FeatureLoss::Mse;
  int64_t reduction = static_cast<int64_t>(Reduction::Mean);
  double p = 2.0;
};

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

Tensor3 call_forward(const at::Tensor& s, const at::Tensor& t, const FeatureSpec& spec, bool gs, bool gt) {
  switch (spec.kind) {
    case FeatureLoss::Mse: {
      static const auto op = find_op<Tensor3(const at::Tensor&, const at::Tensor&, int64_t, bool, bool)>(
          "fusedkd::_feature_mse_forward");
      return op.call(s, t, spec.reduction, gs, gt);
    }
    case FeatureLoss::Attention: {
      static const auto op =
          find_op<Tensor3(const at::Tensor&, const at::Tensor&, double, int64_t, bool, bool)>(
              "fusedkd::_attention_transfer_forward");
      return op.call(s, t, spec.p, spec.reduction, gs, gt);
    }
    case FeatureLoss::Similarity: {
      static const auto op = find_op<Tensor3(const at::Tensor&, const at::Tensor&, bool, bool)>(
          "fusedkd::_similarity_preserving_forward");
      return op.call(s, t, gs, gt);
    }
  }
  TORCH_CHECK(false, "fusedkd: unknown feature loss");
}

// A gradient kept in saved_data for the first backward to take (so that no copy is made).
at::Tensor take_saved(torch::autograd::AutogradContext* ctx, const char* key) {
  c10::IValue& value = ctx->saved_data[key];
  at::Tensor tensor = value.isTensor() ? value.toTensor() : at::Tensor();
  value = c10::IValue();
  return tensor;
}

class FeatureLossFunction : public torch::autograd::Function<FeatureLossFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& student,
                            const at::Tensor& teacher, const FeatureSpec& spec, bool need_student, bool need_teacher) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, gs, gt] = call_forward(student, teacher, spec, need_student, need_teacher);
    ctx->save_for_backward({student, teacher});
    ctx->saved_data["grad_student"] = need_student ? c10::IValue(gs) : c10::IValue();
    ctx->saved_data["grad_teacher"] = need_teacher ? c10::IValue(gt) : c10::IValue();
    ctx->saved_data["need_student"] = need_student;
    ctx->saved_data["need_teacher"] = need_teacher;
    ctx->saved_data["kind"] = static_cast<int64_t>(spec.kind);
    ctx->saved_data["reduction"] = spec.reduction;
    ctx->saved_data["p"] = spec.p;
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto& data = ctx->saved_data;
    const bool need_student = data["need_student"].toBool();
    const bool need_teacher = data["need_teacher"].toBool();
    at::Tensor gs = take_saved(ctx, "grad_student");
    at::Tensor gt = take_saved(ctx, "grad_teacher");
    if ((need_student && !gs.defined()) || (need_teacher && !gt.defined())) {
      // retain_graph: the first backward took the buffers; compute them again.
      const auto saved = ctx->get_saved_variables();
      FeatureSpec spec;
      spec.kind = static_cast<FeatureLoss>(data["kind"].toInt());
      spec.reduction = data["reduction"].toInt();
      spec.p = data["p"].toDouble();
      at::AutoDispatchBelowADInplaceOrView guard;
      auto result = call_forward(saved[0], saved[1], spec, need_student, need_teacher);
      gs = std::get<1>(result);
      gt = std::get<2>(result);
    }
    if (need_student) scale_gradient(gs, grad_outputs[0]);
    if (need_teacher) scale_gradient(gt, grad_outputs[0]);
    return {need_student ? gs : at::Tensor(), need_teacher ? gt : at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor run_feature_loss(const at::Tensor& s, const at::Tensor& t, const FeatureSpec& spec) {
  const bool grad_mode = at::GradMode::is_enabled();
  const bool need_student = grad_mode && s.requires_grad();
  const bool need_teacher = grad_mode && t.requires_grad();
  if (!need_student && !need_teacher) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return std::get<0>(call_forward(s, t, spec, false, false));
  }
  return FeatureLossFunction::apply(s, t, spec, need_student, need_teacher);
}

using ProjectedForward = Tensor3(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                 const at::Tensor&, int64_t, bool, bool);
using ProjectionBackward = Tensor3(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool, bool);

Tensor3 call_projected_forward(const at::Tensor& s, const at::Tensor& w, const std::optional<at::Tensor>& b,
                               const at::Tensor& t, int64_t reduction, bool keep, bool grad_teacher) {
  static const auto op = find_op<ProjectedForward>("fusedkd::_projected_feature_mse_forward");
  return op.call(s, w, b, t, reduction, keep, grad_teacher);
}

class ProjectedFunction : public torch::autograd::Function<ProjectedFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& student, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& teacher, int64_t reduction,
                            std::vector<bool> needs) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool keep = needs[0] || needs[1] || needs[2];
    auto [loss, g, gt] = call_projected_forward(student, weight, bias, teacher, reduction, keep, needs[3]);
    ctx->save_for_backward({student, weight, teacher});
    ctx->saved_data["bias"] = bias ? c10::IValue(*bias) : c10::IValue();
    ctx->saved_data["grad_projection"] = keep ? c10::IValue(g) : c10::IValue();
    ctx->saved_data["grad_teacher"] = needs[3] ? c10::IValue(gt) : c10::IValue();
    const char* keys[4] = {"need_student", "need_weight", "need_bias", "need_teacher"};
    for (int i = 0; i < 4; ++i) ctx->saved_data[keys[i]] = static_cast<bool>(needs[i]);
    ctx->saved_data["reduction"] = reduction;
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto& data = ctx->saved_data;
    const bool needs[4] = {data["need_student"].toBool(), data["need_weight"].toBool(), data["need_bias"].toBool(),
                           data["need_teacher"].toBool()};
    const bool keep = needs[0] || needs[1] || needs[2];
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &student = saved[0], &weight = saved[1], &teacher = saved[2];
    const std::optional<at::Tensor> bias =
        data["bias"].isTensor() ? std::optional<at::Tensor>(data["bias"].toTensor()) : std::nullopt;
    at::Tensor g = take_saved(ctx, "grad_projection");
    at::Tensor gt = take_saved(ctx, "grad_teacher");
    at::AutoDispatchBelowADInplaceOrView guard;
    if ((keep && !g.defined()) || (needs[3] && !gt.defined())) {  // retain_graph: recompute
      auto result = call_projected_forward(student, weight, bias, teacher, data["reduction"].toInt(), keep,
                                           needs[3]);
      g = std::get<1>(result);
      gt = std::get<2>(result);
    }
    torch::autograd::variable_list grads(6);
    if (needs[3]) {
      scale_gradient(gt, grad_outputs[0]);
      grads[3] = gt;
    }
    if (keep) {
      scale_gradient(g, grad_outputs[0]);
      static const auto op = find_op<ProjectionBackward>("fusedkd::_projection_backward");
      auto [gx, gw, gb] = op.call(g, student, weight, needs[0], needs[1], needs[2] && bias.has_value());
      if (needs[0]) grads[0] = gx.to(student.scalar_type());
      if (needs[1]) grads[1] = gw.reshape(weight.sizes()).to(weight.scalar_type());
      if (needs[2] && bias) grads[2] = gb.to(bias->scalar_type());
    }
    return grads;
  }
};

// ---------------------------------------------------------------- public ops

int64_t parse_reduction(const char* op, c10::string_view reduction, bool allow_batchmean) {
  if (reduction == "none") return static_cast<int64_t>(Reduction::None);
  if (reduction == "sum") return static_cast<int64_t>(Reduction::Sum);
  if (reduction == "mean") return static_cast<int64_t>(Reduction::Mean);
  if (allow_batchmean && reduction == "batchmean") return static_cast<int64_t>(Reduction::BatchMean);
  TORCH_CHECK(false, op, ": reduction must be one of \"none\", \"sum\", \"mean\"",
              allow_batchmean ? ", \"batchmean\"" : "", ", got \"", std::string(reduction), "\"");
}

at::Tensor feature_mse_kernel(const at::Tensor& s, const at::Tensor& t, c10::string_view reduction) {
  FeatureSpec spec;
  spec.kind = FeatureLoss::Mse;
  spec.reduction = parse_reduction("fusedkd::feature_mse", reduction, false);
  return run_feature_loss(s, t, spec);
}

at::Tensor attention_transfer_kernel(const at::Tensor& s, const at::Tensor& t, double p, c10::string_view reduction) {
  FeatureSpec spec;
  spec.kind = FeatureLoss::Attention;
  spec.p = p;
  spec.reduction = parse_reduction("fusedkd::attention_transfer", reduction, true);
  return run_feature_loss(s, t, spec);
}

at::Tensor similarity_preserving_kernel(const at::Tensor& s, const at::Tensor& t) {
  FeatureSpec spec;
  spec.kind = FeatureLoss::Similarity;
  return run_feature_loss(s, t, spec);
}

at::Tensor projected_feature_mse_kernel(const at::Tensor& student, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, const at::Tensor& teacher,
                                        c10::string_view reduction) {
  const int64_t code = parse_reduction("fusedkd::projected_feature_mse", reduction, false);
  const std::optional<at::Tensor> b = bias && bias->defined() ? bias : std::nullopt;
  const bool grad_mode = at::GradMode::is_enabled();
  std::vector<bool> needs{grad_mode && student.requires_grad(), grad_mode && weight.requires_grad(),
                          grad_mode && b && b->requires_grad(), grad_mode && teacher.requires_grad()};
  if (!needs[0] && !needs[1] && !needs[2] && !needs[3]) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return std::get<0>(call_projected_forward(student, weight, b, teacher, code, false, false));
  }
  return ProjectedFunction::apply(student, weight, b, teacher, code, needs);
}

// ---------------------------------------------------------------- CPU and Meta kernels

const FeatureBackend& cpu_backend() {
  static const FeatureBackend backend{
      [](const FeatureMseArgs& a) { feature_mse_cpu(a, torch_cpu_executor()); },
      [](const AttentionTransferArgs& a) { attention_transfer_cpu(a, torch_cpu_executor()); },
      [](const SimilarityPreservingArgs& a) { similarity_preserving_cpu(a, torch_cpu_executor()); },
      [](const ProjectedFeatureMseArgs& a) { projected_feature_mse_cpu(a, torch_cpu_executor()); },
      [](const ProjectionBackwardArgs& a) { projection_backward_cpu(a, torch_cpu_executor()); },
      [](DType student, DType teacher) { return DTypePair{student, teacher}; }};
  return backend;
}

Tensor3 mse_cpu(const at::Tensor& s, const at::Tensor& t, int64_t reduction, bool gs, bool gt) {
  return feature_mse_forward_op(s, t, reduction, gs, gt, cpu_backend());
}
Tensor3 attention_cpu(const at::Tensor& s, const at::Tensor& t, double p, int64_t reduction, bool gs, bool gt) {
  return attention_transfer_forward_op(s, t, p, reduction, gs, gt, cpu_backend());
}
Tensor3 similarity_cpu(const at::Tensor& s, const at::Tensor& t, bool gs, bool gt) {
  return similarity_preserving_forward_op(s, t, gs, gt, cpu_backend());
}
Tensor3 projected_cpu(const at::Tensor& s, const at::Tensor& w, const std::optional<at::Tensor>& b, const at::Tensor& t,
                      int64_t reduction, bool keep, bool gt) {
  return projected_feature_mse_forward_op(s, w, b, t, reduction, keep, gt, cpu_backend());
}
Tensor3 projection_backward_cpu_kernel(const at::Tensor& g, const at::Tensor& s, const at::Tensor& w, bool gx, bool gw,
                                       bool gb) {
  return projection_backward_op(g, s, w, gx, gw, gb, cpu_backend());
}

// Meta: shapes and dtypes only (torch.compile, opcheck), with symbolic sizes.
at::Tensor meta_empty(bool wanted, const at::Tensor& like, const at::TensorOptions& options) {
  return wanted ? at::empty_like(like, options) : at::empty({0}, options);
}

Tensor3 mse_meta(const at::Tensor& s, const at::Tensor& t, int64_t reduction, bool gs, bool gt) {
  const auto loss_options = s.options().dtype(loss_dtype({s.scalar_type(), t.scalar_type()}));
  const bool elementwise = reduction == static_cast<int64_t>(Reduction::None);
  return {elementwise ? at::empty_like(s, loss_options) : at::empty({}, loss_options), meta_empty(gs, s, s.options()),
          meta_empty(gt, t, t.options())};
}
Tensor3 attention_meta(const at::Tensor& s, const at::Tensor& t, double, int64_t reduction, bool gs, bool gt) {
  const auto loss_options = s.options().dtype(loss_dtype({s.scalar_type(), t.scalar_type()}));
  const bool per_row = reduction == static_cast<int64_t>(Reduction::None);
  return {per_row ? at::empty_symint({s.sym_size(0)}, loss_options) : at::empty({}, loss_options),
          meta_empty(gs, s, s.options()), meta_empty(gt, t, t.options())};
}
Tensor3 similarity_meta(const at::Tensor& s, const at::Tensor& t, bool gs, bool gt) {
  const auto loss_options = s.options().dtype(loss_dtype({s.scalar_type(), t.scalar_type()}));
  return {at::empty({}, loss_options), meta_empty(gs, s, s.options()), meta_empty(gt, t, t.options())};
}
Tensor3 projected_meta(const at::Tensor& s, const at::Tensor& w, const std::optional<at::Tensor>& b,
                       const at::Tensor& t, int64_t reduction, bool keep, bool gt) {
  const bool has_bias = b && b->defined();
  const auto options = s.options().dtype(loss_dtype(
      {s.scalar_type(), w.scalar_type(), t.scalar_type(), has_bias ? b->scalar_type() : at::kFloat}));
  const bool elementwise = reduction == static_cast<int64_t>(Reduction::None);
  return {elementwise ? at::empty_like(t, options) : at::empty({}, options), meta_empty(keep, t, options),
          meta_empty(gt, t, t.options())};
}
Tensor3 projection_backward_meta(const at::Tensor& g, const at::Tensor& s, const at::Tensor& w, bool gx, bool gw,
                                 bool gb) {
  const auto options = g.options();
  return {meta_empty(gx, s, options),
          gw ? at::empty_symint({w.sym_size(0), w.sym_size(1)}, options) : at::empty({0}, options),
          gb ? at::empty_symint({w.sym_size(0)}, options) : at::empty({0}, options)};
}

}  // namespace
}  // namespace fusedkd::torch_ext

namespace fusedkd {

at::Tensor feature_mse(const at::Tensor& student, const at::Tensor& teacher, const std::string& reduction) {
  static const auto op = torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>(
      "fusedkd::feature_mse");
  return op.call(student, teacher, reduction);
}

at::Tensor attention_transfer(const at::Tensor& student, const at::Tensor& teacher, double p,
                              const std::string& reduction) {
  static const auto op =
      torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::string_view)>(
          "fusedkd::attention_transfer");
  return op.call(student, teacher, p, reduction);
}

at::Tensor projected_feature_mse(const at::Tensor& student, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& teacher,
                                 const std::string& reduction) {
  static const auto op = torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                       const std::optional<at::Tensor>&, const at::Tensor&,
                                                       c10::string_view)>("fusedkd::projected_feature_mse");
  return op.call(student, weight, bias, teacher, reduction);
}

at::Tensor similarity_preserving(const at::Tensor& student, const at::Tensor& teacher) {
  static const auto op = torch_ext::find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>(
      "fusedkd::similarity_preserving");
  return op.call(student, teacher);
}

}  // namespace fusedkd

TORCH_LIBRARY_IMPL(fusedkd, CPU, m) {
  using namespace fusedkd::torch_ext;
  m.impl("_feature_mse_forward", &mse_cpu);
  m.impl("_attention_transfer_forward", &attention_cpu);
  m.impl("_similarity_preserving_forward", &similarity_cpu);
  m.impl("_projected_feature_mse_forward", &projected_cpu);
  m.impl("_projection_backward", &projection_backward_cpu_kernel);
}

TORCH_LIBRARY_IMPL(fusedkd, Meta, m) {
  using namespace fusedkd::torch_ext;
  m.impl("_feature_mse_forward", &mse_meta);
  m.impl("_attention_transfer_forward", &attention_meta);
  m.impl("_similarity_preserving_forward", &similarity_meta);
  m.impl("_projected_feature_mse_forward", &projected_meta);
  m.impl("_projection_backward", &projection_backward_meta);
}

TORCH_LIBRARY_IMPL(fusedkd, Autograd, m) {
  using namespace fusedkd::torch_ext;
  m.impl("feature_mse", &feature_mse_kernel);
  m.impl("attention_transfer", &attention_transfer_kernel);
  m.impl("projected_feature_mse", &projected_feature_mse_kernel);
  m.impl("similarity_preserving", &similarity_preserving_kernel);
}

TORCH_LIBRARY_IMPL(fusedkd, CompositeExplicitAutograd, m) {
  using namespace fusedkd::torch_ext;
  m.impl("feature_mse", &feature_mse_kernel);
  m.impl("attention_transfer", &attention_transfer_kernel);
  m.impl("projected_feature_mse", &projected_feature_mse_kernel);
  m.impl("similarity_preserving", &similarity_preserving_kernel);
}

// The schemas of every fusedkd op (one TORCH_LIBRARY block per namespace is allowed) and every
// registration but the backends' (backend_cpu.cpp, backend_cuda.cpp: register_backend_kernels).
// Behaviour: ../shared/spec/ops.md, docs/architecture.md; the op bodies: ops.h.
#include <torch/library.h>

#include "fusedkd/torch.h"
#include "ops.h"

TORCH_LIBRARY(fusedkd, m) {
  m.def("softmax_t(Tensor logits, float temperature=1.0) -> Tensor");
  m.def("log_softmax_t(Tensor logits, float temperature=1.0) -> Tensor");
  m.def("softmax_t_backward(Tensor grad_output, Tensor output, float temperature) -> Tensor");
  m.def("log_softmax_t_backward(Tensor grad_output, Tensor output, float temperature) -> Tensor");
  // The backward of every loss op: grad *= grad_output in place (one factor, one per row of the
  // leading dims, or one per element). Returns nothing: a mutating op with no aliased output is
  // one torch.compile can functionalize.
  m.def("_scale_grad_(Tensor(a!) grad, Tensor grad_output) -> ()");
}

// The soft-target losses (../shared/spec/ops.md) and their internal op: one fused forward that
// also returns the gradients (scaled for grad_output = 1; empty when not asked for; in float32 for
// a float16 input, common.h: gradient_buffer_type).
TORCH_LIBRARY_FRAGMENT(fusedkd, m) {
  m.def("kl_div(Tensor student_logits, Tensor teacher_logits, float temperature=1.0, "
        "str reduction=\"batchmean\", bool reverse=False) -> Tensor");
  m.def("jsd(Tensor student_logits, Tensor teacher_logits, float temperature=1.0, float beta=0.5, "
        "str reduction=\"batchmean\") -> Tensor");
  m.def("soft_mse(Tensor student_logits, Tensor teacher_logits, float temperature=1.0, "
        "str reduction=\"mean\") -> Tensor");
  m.def("kd_loss(Tensor student_logits, Tensor teacher_logits, Tensor? labels=None, "
        "float temperature=1.0, float soft_weight=1.0, float hard_weight=0.0, str divergence=\"kl\", "
        "float beta=0.5, int ignore_index=-100, bool t2_scale=False) -> Tensor");
  m.def("_soft_target_forward(Tensor student, Tensor teacher, Tensor? labels, float temperature, "
        "int divergence, float beta, int ignore_index, float soft_scale, float hard_scale, "
        "bool per_row, bool divide_by_valid_rows, bool grad_student, bool grad_teacher) "
        "-> (Tensor, Tensor, Tensor)");
}

// The feature-map losses (../shared/spec/ops.md) and their internal ops: fused forwards that also
// return the gradients (or, for the projection, dL/dy) and the projection's GEMM backward.
TORCH_LIBRARY_FRAGMENT(fusedkd, m) {
  m.def("feature_mse(Tensor student, Tensor teacher, str reduction=\"mean\") -> Tensor");
  m.def("attention_transfer(Tensor student, Tensor teacher, float p=2.0, str reduction=\"mean\") -> Tensor");
  m.def("projected_feature_mse(Tensor student, Tensor weight, Tensor? bias, Tensor teacher, "
        "str reduction=\"mean\") -> Tensor");
  m.def("similarity_preserving(Tensor student, Tensor teacher) -> Tensor");
  // reduction: 0 none, 1 sum, 2 mean, 3 batchmean.
  m.def("_feature_mse_forward(Tensor student, Tensor teacher, int reduction, bool grad_student, bool grad_teacher) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("_attention_transfer_forward(Tensor student, Tensor teacher, float p, int reduction, bool grad_student, "
        "bool grad_teacher) -> (Tensor, Tensor, Tensor)");
  m.def("_similarity_preserving_forward(Tensor student, Tensor teacher, bool grad_student, bool grad_teacher) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("_projected_feature_mse_forward(Tensor student, Tensor weight, Tensor? bias, Tensor teacher, int reduction, "
        "bool keep_gradient, bool grad_teacher) -> (Tensor, Tensor, Tensor)");
  m.def("_projection_backward(Tensor grad_projection, Tensor student, Tensor weight, bool grad_student, "
        "bool grad_weight, bool grad_bias) -> (Tensor, Tensor, Tensor)");
}

// The cache of freed large CPU outputs (torch_ext/outputs.h): frees what it holds, returns the
// bytes. No tensor argument: a kernel registered with the schema (CompositeImplicitAutograd) is
// what a call without tensors reaches. Not for traced code: fusedkd.release_cpu_output_cache
// keeps torch.compile out of it.
TORCH_LIBRARY_FRAGMENT(fusedkd, m) {
  m.def("release_cpu_output_cache() -> int", [] { return fusedkd::release_cpu_output_cache(); });
}

// ---------------------------------------------------------------- registrations

namespace fusedkd::torch_ext {
namespace {

// The public loss ops run the same function above autograd (Autograd) and below it
// (CompositeExplicitAutograd: CPU, CUDA, Meta; inference mode), where no input requires grad.
void register_loss_ops(torch::Library& m) {
  m.impl("kl_div", &kl_div_op);
  m.impl("jsd", &jsd_op);
  m.impl("soft_mse", &soft_mse_op);
  m.impl("kd_loss", &kd_loss_op);
  m.impl("feature_mse", &feature_mse_op);
  m.impl("attention_transfer", &attention_transfer_op);
  m.impl("projected_feature_mse", &projected_feature_mse_op);
  m.impl("similarity_preserving", &similarity_preserving_op);
}

}  // namespace
}  // namespace fusedkd::torch_ext

TORCH_LIBRARY_IMPL(fusedkd, Autograd, m) {
  using namespace fusedkd::torch_ext;
  using fusedkd::SoftmaxKind;
  register_loss_ops(m);
  m.impl("softmax_t", &softmax_op<SoftmaxKind::Softmax>);
  m.impl("log_softmax_t", &softmax_op<SoftmaxKind::LogSoftmax>);
}

TORCH_LIBRARY_IMPL(fusedkd, CompositeExplicitAutograd, m) { fusedkd::torch_ext::register_loss_ops(m); }

TORCH_LIBRARY_IMPL(fusedkd, Meta, m) {
  using namespace fusedkd::torch_ext;
  using fusedkd::SoftmaxKind;
  m.impl("softmax_t", &softmax_forward_meta<SoftmaxKind::Softmax>);
  m.impl("log_softmax_t", &softmax_forward_meta<SoftmaxKind::LogSoftmax>);
  m.impl("softmax_t_backward", &softmax_backward_meta<SoftmaxKind::Softmax>);
  m.impl("log_softmax_t_backward", &softmax_backward_meta<SoftmaxKind::LogSoftmax>);
  m.impl("_scale_grad_", &scale_grad_meta);
  m.impl("_soft_target_forward", &soft_target_forward_meta);
  m.impl("_feature_mse_forward", &feature_mse_forward_meta);
  m.impl("_attention_transfer_forward", &attention_transfer_forward_meta);
  m.impl("_similarity_preserving_forward", &similarity_preserving_forward_meta);
  m.impl("_projected_feature_mse_forward", &projected_feature_mse_forward_meta);
  m.impl("_projection_backward", &projection_backward_meta);
}

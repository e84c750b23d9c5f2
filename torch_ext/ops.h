// Every op of the library as the dispatcher sees it (schemas: library.cpp; behaviour:
// ../shared/spec/ops.md). Each op has one home file:
//   softmax_ops.cpp          softmax_t, log_softmax_t and their backward ops
//   soft_target_ops.cpp      kl_div, jsd, soft_mse, kd_loss           -> _soft_target_forward
//   feature_mse_ops.cpp      feature_mse                              -> _feature_mse_forward
//   attention_transfer_ops.cpp  attention_transfer                    -> _attention_transfer_forward
//   similarity_preserving_ops.cpp  similarity_preserving              -> _similarity_preserving_forward
//   projected_feature_mse_ops.cpp  projected_feature_mse              -> _projected_feature_mse_forward,
//                                                                       _projection_backward
//   scale_grad.cpp           _scale_grad_ (the backward of every loss op)
// The kinds of function, named alike across the files:
//   <name>(const Backend&, ...)   an op's body on any device, registered per backend by
//                                 register_backend_kernels below: the loss ops' internal forwards
//                                 (<op>_forward), softmax_forward / softmax_backward, scale_grad,
//                                 projection_backward;
//   <name>_meta(...)              its Meta kernel: shapes and dtypes only (torch.compile, opcheck);
//   <op>_op(...)                  a public op's Autograd kernel: for the loss ops, argument checks
//                                 then run_loss (autograd.h), also registered for
//                                 CompositeExplicitAutograd; softmax_op, a torch::autograd::Function
//                                 whose backward is its own op.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "backend.h"
#include "scale_grad.h"

namespace fusedkd::torch_ext {

using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// ---------------------------------------------------------------- softmax_ops.cpp

template <SoftmaxKind K>
at::Tensor softmax_forward(const Backend& backend, const at::Tensor& logits, double temperature);
template <SoftmaxKind K>
at::Tensor softmax_backward(const Backend& backend, const at::Tensor& grad_output, const at::Tensor& output,
                            double temperature);
template <SoftmaxKind K>
at::Tensor softmax_forward_meta(const at::Tensor& logits, double temperature);
template <SoftmaxKind K>
at::Tensor softmax_backward_meta(const at::Tensor& grad_output, const at::Tensor& output, double temperature);
template <SoftmaxKind K>
at::Tensor softmax_op(const at::Tensor& logits, double temperature);

// ---------------------------------------------------------------- soft_target_ops.cpp

Tensor3 soft_target_forward(const Backend& backend, const at::Tensor& student, const at::Tensor& teacher,
                            const std::optional<at::Tensor>& labels, double temperature, int64_t divergence,
                            double beta, int64_t ignore_index, double soft_scale, double hard_scale, bool per_row,
                            bool divide_by_valid_rows, bool grad_student, bool grad_teacher);
Tensor3 soft_target_forward_meta(const at::Tensor& student, const at::Tensor& teacher,
                                 const std::optional<at::Tensor>& labels, double temperature, int64_t divergence,
                                 double beta, int64_t ignore_index, double soft_scale, double hard_scale,
                                 bool per_row, bool divide_by_valid_rows, bool grad_student, bool grad_teacher);
at::Tensor kl_div_op(const at::Tensor& s, const at::Tensor& t, double temperature, c10::string_view reduction,
                     bool reverse);
at::Tensor jsd_op(const at::Tensor& s, const at::Tensor& t, double temperature, double beta,
                  c10::string_view reduction);
at::Tensor soft_mse_op(const at::Tensor& s, const at::Tensor& t, double temperature, c10::string_view reduction);
at::Tensor kd_loss_op(const at::Tensor& s, const at::Tensor& t, const std::optional<at::Tensor>& labels,
                      double temperature, double soft_weight, double hard_weight, c10::string_view divergence,
                      double beta, int64_t ignore_index, bool t2_scale);

// ---------------------------------------------------------------- feature-map losses

Tensor3 feature_mse_forward(const Backend& backend, const at::Tensor& student, const at::Tensor& teacher,
                            int64_t reduction, bool grad_student, bool grad_teacher);
Tensor3 feature_mse_forward_meta(const at::Tensor& student, const at::Tensor& teacher, int64_t reduction,
                                 bool grad_student, bool grad_teacher);
at::Tensor feature_mse_op(const at::Tensor& s, const at::Tensor& t, c10::string_view reduction);

Tensor3 attention_transfer_forward(const Backend& backend, const at::Tensor& student, const at::Tensor& teacher,
                                   double p, int64_t reduction, bool grad_student, bool grad_teacher);
Tensor3 attention_transfer_forward_meta(const at::Tensor& student, const at::Tensor& teacher, double p,
                                        int64_t reduction, bool grad_student, bool grad_teacher);
at::Tensor attention_transfer_op(const at::Tensor& s, const at::Tensor& t, double p, c10::string_view reduction);

Tensor3 similarity_preserving_forward(const Backend& backend, const at::Tensor& student, const at::Tensor& teacher,
                                      bool grad_student, bool grad_teacher);
Tensor3 similarity_preserving_forward_meta(const at::Tensor& student, const at::Tensor& teacher, bool grad_student,
                                           bool grad_teacher);
at::Tensor similarity_preserving_op(const at::Tensor& s, const at::Tensor& t);

Tensor3 projected_feature_mse_forward(const Backend& backend, const at::Tensor& student, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, const at::Tensor& teacher,
                                      int64_t reduction, bool keep_gradient, bool grad_teacher);
Tensor3 projected_feature_mse_forward_meta(const at::Tensor& student, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias, const at::Tensor& teacher,
                                           int64_t reduction, bool keep_gradient, bool grad_teacher);
Tensor3 projection_backward(const Backend& backend, const at::Tensor& grad_projection, const at::Tensor& student,
                            const at::Tensor& weight, bool grad_student, bool grad_weight, bool grad_bias);
Tensor3 projection_backward_meta(const at::Tensor& grad_projection, const at::Tensor& student,
                                 const at::Tensor& weight, bool grad_student, bool grad_weight, bool grad_bias);
at::Tensor projected_feature_mse_op(const at::Tensor& student, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, const at::Tensor& teacher,
                                    c10::string_view reduction);

// ---------------------------------------------------------------- registration

template <const Backend& (*GetBackend)()>
void register_backend_kernels(torch::Library& m) {
  m.impl("softmax_t", &OnBackend<softmax_forward<SoftmaxKind::Softmax>, GetBackend>::call);
  m.impl("log_softmax_t", &OnBackend<softmax_forward<SoftmaxKind::LogSoftmax>, GetBackend>::call);
  m.impl("softmax_t_backward", &OnBackend<softmax_backward<SoftmaxKind::Softmax>, GetBackend>::call);
  m.impl("log_softmax_t_backward", &OnBackend<softmax_backward<SoftmaxKind::LogSoftmax>, GetBackend>::call);
  m.impl("_scale_grad_", &OnBackend<scale_grad, GetBackend>::call);
  m.impl("_soft_target_forward", &OnBackend<soft_target_forward, GetBackend>::call);
  m.impl("_feature_mse_forward", &OnBackend<feature_mse_forward, GetBackend>::call);
  m.impl("_attention_transfer_forward", &OnBackend<attention_transfer_forward, GetBackend>::call);
  m.impl("_similarity_preserving_forward", &OnBackend<similarity_preserving_forward, GetBackend>::call);
  m.impl("_projected_feature_mse_forward", &OnBackend<projected_feature_mse_forward, GetBackend>::call);
  m.impl("_projection_backward", &OnBackend<projection_backward, GetBackend>::call);
}

}  // namespace fusedkd::torch_ext

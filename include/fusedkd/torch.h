// The C++ API of the LibTorch ops (library fusedkd_torch, CMake target fusedkd::torch).
// Each op function calls the registered op through the dispatcher, so autograd, CPU/CUDA dispatch
// and the argument checks are the same as for torch.ops.fusedkd.* in Python.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

namespace fusedkd {

// softmax(logits / temperature) over the last dim; result in logits' dtype.
at::Tensor softmax_t(const at::Tensor& logits, double temperature = 1.0);
// log_softmax(logits / temperature) over the last dim; result in logits' dtype.
at::Tensor log_softmax_t(const at::Tensor& logits, double temperature = 1.0);

// The soft-target losses, exactly as ../shared/spec/ops.md defines them. Losses are float32
// (float64 for float64 inputs); student and teacher may have different floating dtypes.

// KL(teacher || student) at temperature T (KL(student || teacher) with reverse), per row, reduced
// by "none" (per row, shape [*]), "sum", "mean" (/ (R * V)) or "batchmean" (/ R).
at::Tensor kl_div(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature = 1.0,
                  const std::string& reduction = "batchmean", bool reverse = false);
// Generalized Jensen-Shannon divergence with mixture m = beta p + (1 - beta) q.
at::Tensor jsd(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature = 1.0,
               double beta = 0.5, const std::string& reduction = "batchmean");
// sum_j (softmax(s/T)_j - softmax(t/T)_j)^2 per row; "mean" equals nn.MSELoss() on the softmaxes.
at::Tensor soft_mse(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature = 1.0,
                    const std::string& reduction = "mean");
// hard_weight * CE(student, labels) + soft_weight * (t2_scale ? T^2 : 1) * divergence, over the
// rows whose label is not ignore_index; divergence is "kl", "reverse_kl", "jsd" or "mse".
at::Tensor kd_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                   const std::optional<at::Tensor>& labels = std::nullopt, double temperature = 1.0,
                   double soft_weight = 1.0, double hard_weight = 0.0, const std::string& divergence = "kl",
                   double beta = 0.5, int64_t ignore_index = -100, bool t2_scale = false);

// The feature-map losses (../shared/spec/ops.md). Losses are float32 (float64 for float64 inputs).

// (s - t)^2 over same-shaped feature maps, read in memory order (channels-last included):
// "mean" (= F.mse_loss), "sum" or "none" (elementwise, in the student's layout).
at::Tensor feature_mse(const at::Tensor& student, const at::Tensor& teacher, const std::string& reduction = "mean");
// Attention transfer between [N, C_s, *spatial] and [N, C_t, *spatial]: a(x) = F.normalize of
// mean_c |x|^p over space; per-sample loss sum (a(s) - a(t))^2, reduced by "mean" (/ (N * spatial)),
// "batchmean" (/ N), "sum" or "none" (per sample, shape [N]).
at::Tensor attention_transfer(const at::Tensor& student, const at::Tensor& teacher, double p = 2.0,
                              const std::string& reduction = "mean");
// FitNets hint: feature_mse(W x + b, teacher) with a 1x1 regressor W [C_t, C_s] (or [C_t, C_s, 1, 1]),
// b [C_t] or none, applied at every position of x = [N, C_s, *spatial].
at::Tensor projected_feature_mse(const at::Tensor& student, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& teacher,
                                 const std::string& reduction = "mean");
// Similarity-preserving loss ||normalize(F_s F_s^T) - normalize(F_t F_t^T)||_F^2 / N^2, F = x.reshape(N, -1).
at::Tensor similarity_preserving(const at::Tensor& student, const at::Tensor& teacher);

// Not an op: the memory of the ops' large CPU outputs (2 MiB and more), which is kept when they
// are freed, up to FUSEDKD_CPU_OUTPUT_CACHE_MB (1024 MiB by default; 0 keeps none), for the next
// output of the same size rounded to 2 MiB. This frees every block kept and returns their bytes
// (fusedkd.release_cpu_output_cache in Python; docs/python.md).
std::int64_t release_cpu_output_cache();

}  // namespace fusedkd

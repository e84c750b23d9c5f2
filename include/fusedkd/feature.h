// The feature-map losses (feature_mse, attention_transfer, projected_feature_mse,
// similarity_preserving): launchers over raw pointers, CPU and CUDA. Math: docs/math.md,
// "Feature-map losses". Every total is a fixed-order sum (no floating-point atomics), so a result
// does not change from run to run.
//
// Loss dtype ("acc"): float64 when an input is float64, else float32. Gradients are written as if
// grad_output were 1; the ops scale them afterwards (fusedkd/scale.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "fusedkd/cpu_executor.h"
#include "fusedkd/dtype.h"

struct CUstream_st;
struct cublasContext;  // cublasHandle_t is cublasContext*

namespace fusedkd {

// ---------------------------------------------------------------- feature_mse

// Squared error of two arrays with the same layout, read in memory order (element i of one is
// element i of the other, whatever the logical shape).
struct FeatureMseArgs {
  const void* student = nullptr;
  DType student_dtype = DType::Float32;
  const void* teacher = nullptr;
  DType teacher_dtype = DType::Float32;
  std::int64_t numel = 0;

  // Optional per-channel bias added to the student (the FitNets regressor's b), in the loss
  // dtype: element i is in channel (i / bias_inner) % bias_channels.
  const void* bias = nullptr;
  std::int64_t bias_channels = 1;
  std::int64_t bias_inner = 1;

  // total = scale * sum_i (s_i - t_i)^2 (elementwise_loss: loss[i] = scale * (s_i - t_i)^2 in the
  // loss dtype); the gradients are 2 scale (s - t) and its negative. grad_student may be the
  // student array itself (updated in place).
  double scale = 1.0;
  bool elementwise_loss = false;
  void* loss = nullptr;
  void* grad_student = nullptr;  // gradient_dtype(student_dtype, float16_gradients_in_float32)
  void* grad_teacher = nullptr;  // gradient_dtype(teacher_dtype, float16_gradients_in_float32)
  void* workspace = nullptr;     // feature_mse_workspace_bytes(args) bytes, on the kernel's device
  // A float16 input's gradient written in float32 (fusedkd/dtype.h: gradient_dtype; the CPU
  // launcher; the CUDA launcher rejects it). grad_student must then not be a float16 student itself.
  bool float16_gradients_in_float32 = false;
};

std::size_t feature_mse_workspace_bytes(const FeatureMseArgs& args);
bool feature_mse_uses_double(const FeatureMseArgs& args);
void feature_mse_cpu(const FeatureMseArgs& args, const CpuExecutor& executor = {});
void feature_mse_cuda(const FeatureMseArgs& args, CUstream_st* stream);

// ---------------------------------------------------------------- attention_transfer

// One dense feature map [batch, channels, spatial]: channels-first (NC*, spatial contiguous) or
// channels-last (N*C, channels contiguous); batch is the outermost dim either way.
struct FeatureMap {
  const void* data = nullptr;
  DType dtype = DType::Float32;
  std::int64_t channels = 0;
  bool channels_last = false;
};

// a(x)_n = mean_c |x_{n,c,:}|^p, normalised to unit L2 norm over space (eps 1e-12, as
// F.normalize); row loss l_n = sum_k (a(s)_nk - a(t)_nk)^2. total = scale * sum_n l_n, or
// (per_row_loss) loss[n] = scale * l_n.
struct AttentionTransferArgs {
  FeatureMap student;
  FeatureMap teacher;
  std::int64_t batch = 0;
  std::int64_t spatial = 0;
  double p = 2.0;
  double scale = 1.0;
  bool per_row_loss = false;
  void* loss = nullptr;
  // The gradients: each in its map's layout, gradient_dtype(its dtype, float16_gradients_in_float32).
  void* grad_student = nullptr;
  void* grad_teacher = nullptr;
  void* workspace = nullptr;
  // A float16 map's gradient written in float32 (fusedkd/dtype.h: gradient_dtype; the CPU launcher;
  // the CUDA launcher rejects it). The gradients must not overlap the maps.
  bool float16_gradients_in_float32 = false;
};
std::size_t attention_transfer_workspace_bytes(const AttentionTransferArgs& args);
bool attention_transfer_uses_double(const AttentionTransferArgs& args);
void attention_transfer_cpu(const AttentionTransferArgs& args, const CpuExecutor& executor = {});
void attention_transfer_cuda(const AttentionTransferArgs& args, CUstream_st* stream);

// ---------------------------------------------------------------- similarity_preserving

// F = [rows, cols] (rows `row_stride` apart, elements contiguous), G = F F^T, each row of G
// L2-normalised (eps 1e-12); loss = ||G~_s - G~_t||_F^2 / rows^2. Inputs are float32, or float64
// when is_double (both); the gradients are contiguous [rows, cols] of that dtype.
struct SimilarityPreservingArgs {
  const void* student = nullptr;
  std::int64_t student_cols = 0;
  std::int64_t student_row_stride = 0;
  const void* teacher = nullptr;
  std::int64_t teacher_cols = 0;
  std::int64_t teacher_row_stride = 0;
  std::int64_t rows = 0;
  bool is_double = false;
  void* loss = nullptr;
  void* grad_student = nullptr;
  void* grad_teacher = nullptr;
  void* workspace = nullptr;
};
std::size_t similarity_preserving_workspace_bytes(const SimilarityPreservingArgs& args);
void similarity_preserving_cpu(const SimilarityPreservingArgs& args, const CpuExecutor& executor = {});
// Runs on the handle's stream (cublasSetStream is the caller's business).
void similarity_preserving_cuda(const SimilarityPreservingArgs& args, cublasContext* handle);

// ---------------------------------------------------------------- projected_feature_mse

// The FitNets hint: y = W x + b at every position of x = [batch, in_channels, spatial], then the
// squared error of y against the teacher. x, W ([out_channels, in_channels], contiguous) and b
// ([out_channels] or null) are float32, or float64 when is_double. x is channels-first with
// contiguous spatial positions (channel_stride >= spatial, any batch_stride) or channels-last
// (channel_stride 1, spatial_stride >= in_channels, batch_stride = spatial * spatial_stride).
// y, the teacher and every [batch, out_channels, spatial] array below are dense in the same
// layout as x (channels-first or channels-last).
struct ProjectionShape {
  const void* student = nullptr;
  std::int64_t batch = 0;
  std::int64_t in_channels = 0;
  std::int64_t out_channels = 0;
  std::int64_t spatial = 0;
  std::int64_t batch_stride = 0;
  std::int64_t channel_stride = 0;
  std::int64_t spatial_stride = 0;
  bool channels_last = false;
  const void* weight = nullptr;
  bool is_double = false;
};

struct ProjectedFeatureMseArgs {
  ProjectionShape shape;
  const void* bias = nullptr;
  const void* teacher = nullptr;
  DType teacher_dtype = DType::Float32;
  double scale = 1.0;  // as FeatureMseArgs::scale
  bool elementwise_loss = false;
  void* loss = nullptr;
  // Required, batch * out_channels * spatial values of x's dtype: y, then (write_gradient)
  // dL/dy = 2 scale (y - t).
  void* projection = nullptr;
  bool write_gradient = true;
  void* grad_teacher = nullptr;  // -2 scale (y - t), teacher dtype, when non-null
  void* workspace = nullptr;     // projected_feature_mse_workspace_bytes(args)
};
std::size_t projected_feature_mse_workspace_bytes(const ProjectedFeatureMseArgs& args);
void projected_feature_mse_cpu(const ProjectedFeatureMseArgs& args, const CpuExecutor& executor = {});
void projected_feature_mse_cuda(const ProjectedFeatureMseArgs& args, cublasContext* handle);

// Given dL/dy (`grad_projection`, dense in x's layout), writes dL/dx (dense: contiguous
// channels-first, or channels-last with spatial_stride = in_channels), dL/dW and dL/db (each
// when non-null), in x's dtype.
struct ProjectionBackwardArgs {
  ProjectionShape shape;
  const void* grad_projection = nullptr;
  void* grad_student = nullptr;
  void* grad_weight = nullptr;
  void* grad_bias = nullptr;
};
void projection_backward_cpu(const ProjectionBackwardArgs& args, const CpuExecutor& executor = {});
void projection_backward_cuda(const ProjectionBackwardArgs& args, cublasContext* handle);

}  // namespace fusedkd

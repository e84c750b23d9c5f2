// CUDA similarity_preserving and projected_feature_mse: cuBLAS GEMMs on the handle's stream around
// the normalised-row kernel (feature_common.cuh) and feature_mse's squared-error pass. FP32 GEMMs
// use CUBLAS_COMPUTE_32F_PEDANTIC: no TF32, whatever the handle's math mode.
// COMPILED, NOT YET RUN ON A GPU (see docs/architecture.md).
#include <cublas_v2.h>

#include <stdexcept>
#include <string>

#include "feature_common.cuh"
#include "fusedkd/feature.h"
#include "../projection.h"
#include "../validate.h"
#include "../workspace.h"

namespace fusedkd::cuda {
namespace {

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("fusedkd: cuBLAS error ") + std::to_string(static_cast<int>(status)) +
                             " from " + what);
}

// ---------------------------------------------------------------- cuBLAS (column-major)

template <typename T>
struct BlasType;
template <>
struct BlasType<float> {
  static constexpr cudaDataType_t kData = CUDA_R_32F;
  // PEDANTIC: full float32 whatever math mode the handle carries. ATen's handle carries
  // CUBLAS_TF32_TENSOR_OP_MATH when a user allows TF32 (torch.backends.cuda.matmul.allow_tf32,
  // set_float32_matmul_precision("high")), and with plain CUBLAS_COMPUTE_32F cuBLAS may then
  // round the inputs to TF32.
  static constexpr cublasComputeType_t kCompute = CUBLAS_COMPUTE_32F_PEDANTIC;
};
template <>
struct BlasType<double> {
  static constexpr cudaDataType_t kData = CUDA_R_64F;
  static constexpr cublasComputeType_t kCompute = CUBLAS_COMPUTE_64F;
};

// Column-major C_i = alpha op(A_i) op(B_i) + beta C_i for i < batch, A_i = a + i * stride_a (and
// so on; stride 0 repeats a matrix).
template <typename T>
void gemm_batched(cublasHandle_t h, bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, double alpha,
                  const T* a, std::int64_t lda, std::int64_t stride_a, const T* b, std::int64_t ldb,
                  std::int64_t stride_b, double beta, T* c, std::int64_t ldc, std::int64_t stride_c, std::int64_t batch) {
  const T al = static_cast<T>(alpha), be = static_cast<T>(beta);
  using detail::blas_int;
  constexpr cudaDataType_t type = BlasType<T>::kData;
  check_cublas(cublasGemmStridedBatchedEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                          blas_int(m, "m"), blas_int(n, "n"), blas_int(k, "k"), &al, a, type,
                                          blas_int(lda, "lda"), stride_a, b, type, blas_int(ldb, "ldb"), stride_b,
                                          &be, c, type, blas_int(ldc, "ldc"), stride_c, blas_int(batch, "batch"),
                                          BlasType<T>::kCompute, CUBLAS_GEMM_DEFAULT),
               "cublasGemmStridedBatchedEx");
}

template <typename T>
void gemm(cublasHandle_t h, bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const T* a,
          std::int64_t lda, const T* b, std::int64_t ldb, double beta, T* c, std::int64_t ldc) {
  gemm_batched(h, ta, tb, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1);
}

cudaStream_t handle_stream(cublasHandle_t handle) {
  cudaStream_t stream = nullptr;
  check_cublas(cublasGetStream(handle, &stream), "cublasGetStream");
  return stream;
}

template <typename Acc>
void launch_similarity_preserving(const SimilarityPreservingArgs& a, cublasHandle_t h) {
  const cudaStream_t stream = handle_stream(h);
  const std::int64_t n = a.rows;
  const Acc* fs = static_cast<const Acc*>(a.student);
  const Acc* ft = static_cast<const Acc*>(a.teacher);
  const detail::NormalizedRowsWorkspace<Acc> workspace(a.workspace, n, n);
  Acc *gram_s = workspace.a_s, *gram_t = workspace.a_t, *d_s = workspace.d_s, *d_t = workspace.d_t;
  Acc* row_loss = workspace.row_loss;
  // Row-major F [n, D] is column-major F^T; G = F F^T is (F^T)^T (F^T).
  gemm(h, true, false, n, n, a.student_cols, 1.0, fs, a.student_row_stride, fs, a.student_row_stride, 0.0, gram_s, n);
  gemm(h, true, false, n, n, a.teacher_cols, 1.0, ft, a.teacher_row_stride, ft, a.teacher_row_stride, 0.0, gram_t, n);
  launch_normalized_rows<Acc>(gram_s, gram_t, n, n, 1.0 / (static_cast<double>(n) * static_cast<double>(n)), row_loss,
                              a.grad_student ? d_s : nullptr, a.grad_teacher ? d_t : nullptr, stream);
  sum_kernel<<<1, kReduceBlock, 0, stream>>>(row_loss, n, 1.0, static_cast<Acc*>(a.loss));
  FUSEDKD_CUDA_CHECK(cudaGetLastError());
  // dL/dF = (D + D^T) F; column-major: grad^T = F^T D^T + F^T D, D^T being D's buffer read column-major.
  const auto feature_gradient = [&](const Acc* d, const Acc* f, std::int64_t cols, std::int64_t ld, void* grad) {
    Acc* g = static_cast<Acc*>(grad);
    gemm(h, false, false, cols, n, n, 1.0, f, ld, d, n, 0.0, g, cols);
    gemm(h, false, true, cols, n, n, 1.0, f, ld, d, n, 1.0, g, cols);
  };
  if (a.grad_student) feature_gradient(d_s, fs, a.student_cols, a.student_row_stride, a.grad_student);
  if (a.grad_teacher) feature_gradient(d_t, ft, a.teacher_cols, a.teacher_row_stride, a.grad_teacher);
}

template <typename Acc>
void project(const ProjectionShape& s, Acc* y, cublasHandle_t h) {
  const Acc* x = static_cast<const Acc*>(s.student);
  const Acc* w = static_cast<const Acc*>(s.weight);
  if (s.channels_last) {  // column-major Y [Ct, N*S] = W [Ct, Cs] X [Cs, N*S]
    gemm(h, true, false, s.out_channels, s.batch * s.spatial, s.in_channels, 1.0, w, s.in_channels, x,
         s.spatial_stride, 0.0, y, s.out_channels);
  } else {  // column-major Y_n [S, Ct] = X_n [S, Cs] W^T [Cs, Ct], batched over n
    gemm_batched(h, false, false, s.spatial, s.out_channels, s.in_channels, 1.0, x, s.channel_stride, s.batch_stride,
                 w, s.in_channels, 0, 0.0, y, s.spatial, s.out_channels * s.spatial, s.batch);
  }
}

// dL/db[c]: a block per channel adds G over batch and space in a fixed order.
template <typename Acc>
__global__ void __launch_bounds__(kBlock) channel_sum_kernel(const Acc* g, std::int64_t batch, std::int64_t channels,
                                                             std::int64_t spatial, bool channels_last, Acc* out) {
  using Reduce = cub::BlockReduce<Acc, kBlock>;
  __shared__ typename Reduce::TempStorage storage;
  for (std::int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    Acc sum = 0;
    for (std::int64_t i = threadIdx.x; i < batch * spatial; i += kBlock) {
      const std::int64_t n = i / spatial, k = i % spatial;
      sum += g[channels_last ? (n * spatial + k) * channels + c : (n * channels + c) * spatial + k];
    }
    const Acc total = Reduce(storage).Sum(sum);
    if (threadIdx.x == 0) out[c] = total;
    __syncthreads();
  }
}

template <typename Acc>
void launch_projection_backward(const ProjectionBackwardArgs& a, cublasHandle_t h) {
  const ProjectionShape& s = a.shape;
  const cudaStream_t stream = handle_stream(h);
  const Acc* x = static_cast<const Acc*>(s.student);
  const Acc* w = static_cast<const Acc*>(s.weight);
  const Acc* g = static_cast<const Acc*>(a.grad_projection);
  const std::int64_t cs = s.in_channels, ct = s.out_channels, sp = s.spatial;
  if (s.channels_last) {
    if (a.grad_student)  // column-major dX [Cs, N*S] = W^T-as-stored [Cs, Ct] G [Ct, N*S]
      gemm(h, false, false, cs, s.batch * sp, ct, 1.0, w, cs, g, ct, 0.0, static_cast<Acc*>(a.grad_student), cs);
    if (a.grad_weight)  // column-major dW^T [Cs, Ct] = X [Cs, N*S] G^T [N*S, Ct]
      gemm(h, false, true, cs, ct, s.batch * sp, 1.0, x, s.spatial_stride, g, ct, 0.0,
           static_cast<Acc*>(a.grad_weight), cs);
  } else {
    if (a.grad_student)  // column-major dX_n [S, Cs] = G_n [S, Ct] W [Ct, Cs]
      gemm_batched(h, false, true, sp, cs, ct, 1.0, g, sp, ct * sp, w, cs, 0, 0.0, static_cast<Acc*>(a.grad_student),
                   sp, cs * sp, s.batch);
    if (a.grad_weight) {  // column-major dW^T [Cs, Ct] = sum_n X_n^T [Cs, S] G_n [S, Ct], in batch order
      for (std::int64_t b = 0; b < s.batch; ++b)
        gemm(h, true, false, cs, ct, sp, 1.0, x + b * s.batch_stride, s.channel_stride, g + b * ct * sp, sp,
             b == 0 ? 0.0 : 1.0, static_cast<Acc*>(a.grad_weight), cs);
    }
  }
  if (a.grad_weight && s.batch == 0)
    FUSEDKD_CUDA_CHECK(cudaMemsetAsync(a.grad_weight, 0, sizeof(Acc) * cs * ct, stream));
  if (a.grad_bias) {
    channel_sum_kernel<Acc><<<grid_size(ct, 1, kBlock), kBlock, 0, stream>>>(g, s.batch, ct, sp, s.channels_last,
                                                                             static_cast<Acc*>(a.grad_bias));
    FUSEDKD_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace
}  // namespace fusedkd::cuda

namespace fusedkd {

void similarity_preserving_cuda(const SimilarityPreservingArgs& args, cublasContext* handle) {
  detail::validate(args);
  if (args.rows == 0) {
    if (args.is_double) cuda::zero_loss<double>(args.loss, cuda::handle_stream(handle));
    else cuda::zero_loss<float>(args.loss, cuda::handle_stream(handle));
    return;
  }
  if (args.is_double) cuda::launch_similarity_preserving<double>(args, handle);
  else cuda::launch_similarity_preserving<float>(args, handle);
}

void projected_feature_mse_cuda(const ProjectedFeatureMseArgs& args, cublasContext* handle) {
  detail::validate(args);
  const ProjectionShape& s = args.shape;
  if (s.batch > 0) {
    if (s.is_double) cuda::project(s, static_cast<double*>(args.projection), handle);
    else cuda::project(s, static_cast<float*>(args.projection), handle);
  }
  feature_mse_cuda(detail::projection_error_args(args), cuda::handle_stream(handle));
}

void projection_backward_cuda(const ProjectionBackwardArgs& args, cublasContext* handle) {
  detail::validate(args);
  if (args.shape.is_double) cuda::launch_projection_backward<double>(args, handle);
  else cuda::launch_projection_backward<float>(args, handle);
}

}  // namespace fusedkd

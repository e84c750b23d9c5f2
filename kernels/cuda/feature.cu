// CUDA feature-map losses. COMPILED, NOT YET RUN ON A GPU (see docs/architecture.md).
//
// feature_mse: one grid-stride pass in memory order, 8 elements per thread per step (16-byte
// vector loads when every array is 16-byte aligned), the loss and the gradients from the same
// read; per-block partial sums in double, then one block adds them in block order.
// attention_transfer: one read of each map for a(x) = mean_c |x|^p (channels-first: lanes along
// space, channels split over the block's rows; channels-last: a warp per position, lanes along
// channels), a block per sample for the normalisation, the loss and dL/da, then (with a
// gradient) a second, elementwise read of x that writes the gradient.
// similarity_preserving and projected_feature_mse: cuBLAS GEMMs on the handle's stream around
// the same normalised-row and squared-error kernels. No floating-point atomics anywhere.
#include <cublas_v2.h>

#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>

#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "elementwise.cuh"
#include "fusedkd/feature.h"
#include "fusedkd/feature_math.h"
#include "fusedkd/math.h"
#include "../projection.h"
#include "../validate.h"
#include "../workspace.h"

namespace fusedkd::cuda {
namespace {

constexpr int kBlock = 256;
constexpr int kReduceBlock = 1024;

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("fusedkd: cuBLAS error ") + std::to_string(static_cast<int>(status)) +
                             " from " + what);
}

// ---------------------------------------------------------------- feature_mse

template <typename Acc>
struct MseParams {
  const void* student;
  const void* teacher;
  std::int64_t numel;
  const Acc* bias;
  std::int64_t bias_channels;
  std::int64_t bias_inner;
  Acc scale;
  Acc* elementwise_loss;
  void* grad_student;
  void* grad_teacher;
  double* partials;
};

// The tail of the array (numel % kItems elements), one element a thread.
template <typename TS, typename TT, typename Acc>
__device__ __forceinline__ Acc mse_tail_element(const MseParams<Acc>& p, std::int64_t i) {
  Acc s = static_cast<Acc>(to_acc(static_cast<const TS*>(p.student)[i]));
  if (p.bias) s += p.bias[channel_of(i, p.bias_inner, p.bias_channels)];
  const MseElement<Acc> e = mse_element(s, static_cast<Acc>(to_acc(static_cast<const TT*>(p.teacher)[i])), p.scale);
  if (p.elementwise_loss) p.elementwise_loss[i] = e.loss;
  if (p.grad_student) static_cast<TS*>(p.grad_student)[i] = from_acc<TS>(static_cast<acc_t<TS>>(e.grad));
  if (p.grad_teacher) static_cast<TT*>(p.grad_teacher)[i] = from_acc<TT>(static_cast<acc_t<TT>>(-e.grad));
  return e.squared;
}

// Elements [first, first + kItems); the loss and the gradients overwrite the loaded values.
template <bool VECTOR, typename TS, typename TT, typename Acc>
__device__ __forceinline__ Acc mse_step(const MseParams<Acc>& p, std::int64_t first) {
  Acc s[kItems], t[kItems], loss[kItems];
  load_items<VECTOR>(static_cast<const TS*>(p.student) + first, s);
  load_items<VECTOR>(static_cast<const TT*>(p.teacher) + first, t);
  if (p.bias) {
#pragma unroll
    for (int k = 0; k < kItems; ++k) s[k] += p.bias[channel_of(first + k, p.bias_inner, p.bias_channels)];
  }
  Acc sum = 0;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const MseElement<Acc> e = mse_element(s[k], t[k], p.scale);
    sum += e.squared;
    loss[k] = e.loss;
    s[k] = e.grad;
    t[k] = -e.grad;
  }
  if (p.elementwise_loss) store_items<VECTOR>(p.elementwise_loss + first, loss);
  if (p.grad_student) store_items<VECTOR>(static_cast<TS*>(p.grad_student) + first, s);
  if (p.grad_teacher) store_items<VECTOR>(static_cast<TT*>(p.grad_teacher) + first, t);
  return sum;
}

template <bool VECTOR, typename TS, typename TT>
__global__ void __launch_bounds__(kElementwiseBlock)
    feature_mse_kernel(MseParams<typename PairTraits<TS, TT>::Acc> p) {
  using Acc = typename PairTraits<TS, TT>::Acc;
  using Reduce = cub::BlockReduce<Acc, kElementwiseBlock>;
  __shared__ typename Reduce::TempStorage storage;
  const std::int64_t steps = p.numel / kItems;
  Acc sum = 0;
  for (std::int64_t step = static_cast<std::int64_t>(blockIdx.x) * kElementwiseBlock + threadIdx.x; step < steps;
       step += static_cast<std::int64_t>(gridDim.x) * kElementwiseBlock)
    sum += mse_step<VECTOR, TS, TT>(p, step * kItems);
  if (blockIdx.x == 0 && steps * kItems + threadIdx.x < p.numel)
    sum += mse_tail_element<TS, TT>(p, steps * kItems + threadIdx.x);
  const Acc total = Reduce(storage).Sum(sum);
  if (threadIdx.x == 0 && p.partials) p.partials[blockIdx.x] = static_cast<double>(total);
}

// out = scale * sum of `count` values, added in index order per thread and then a fixed tree.
template <typename In, typename Out>
__global__ void __launch_bounds__(kReduceBlock) sum_kernel(const In* values, std::int64_t count, double scale, Out* out) {
  using Reduce = cub::BlockReduce<double, kReduceBlock>;
  __shared__ typename Reduce::TempStorage storage;
  double local = 0;
  for (std::int64_t i = threadIdx.x; i < count; i += kReduceBlock) local += static_cast<double>(values[i]);
  const double total = Reduce(storage).Sum(local);
  if (threadIdx.x == 0) *out = static_cast<Out>(total * scale);
}

void launch_feature_mse(const FeatureMseArgs& a, cudaStream_t stream) {
  const unsigned int grid = elementwise_grid(a.numel);
  const bool vector = aligned16(a.student) && aligned16(a.teacher) && aligned16(a.loss) &&
                      aligned16(a.grad_student) && aligned16(a.grad_teacher);
  dispatch_pair(a.student_dtype, a.teacher_dtype, "feature_mse_cuda", [&](auto s_tag, auto t_tag) {
    using TS = typename decltype(s_tag)::type;
    using TT = typename decltype(t_tag)::type;
    using Acc = typename PairTraits<TS, TT>::Acc;
    MseParams<Acc> p{a.student, a.teacher, a.numel, static_cast<const Acc*>(a.bias), a.bias_channels,
                     a.bias_inner, static_cast<Acc>(a.scale),
                     a.elementwise_loss ? static_cast<Acc*>(a.loss) : nullptr, a.grad_student, a.grad_teacher,
                     a.elementwise_loss ? nullptr : static_cast<double*>(a.workspace)};
    if (vector) feature_mse_kernel<true, TS, TT><<<grid, kElementwiseBlock, 0, stream>>>(p);
    else feature_mse_kernel<false, TS, TT><<<grid, kElementwiseBlock, 0, stream>>>(p);
    FUSEDKD_CUDA_CHECK(cudaGetLastError());
    if (!a.elementwise_loss) {
      sum_kernel<<<1, kReduceBlock, 0, stream>>>(p.partials, static_cast<std::int64_t>(grid), a.scale,
                                                 static_cast<Acc*>(a.loss));
      FUSEDKD_CUDA_CHECK(cudaGetLastError());
    }
  });
}

// ---------------------------------------------------------------- attention transfer

constexpr int kMapRows = 8;  // block rows of the channels-first map kernel (channels split 8 ways)

// Channels-first: block (32, 8) per (sample, 32 positions); lane = position, row = channel class.
template <PowerKind K, typename T, typename Acc>
__global__ void __launch_bounds__(32 * kMapRows) attention_map_channels_first_kernel(
    const T* x, std::int64_t batch, std::int64_t channels, std::int64_t spatial, Acc p, Acc* a) {
  __shared__ Acc partial[kMapRows][33];
  const std::int64_t tiles = (spatial + 31) / 32;
  const Acc inv_c = reciprocal(static_cast<Acc>(channels));
  for (std::int64_t item = blockIdx.x; item < batch * tiles; item += gridDim.x) {
    const std::int64_t n = item / tiles;
    const std::int64_t k = (item % tiles) * 32 + threadIdx.x;
    Acc sum = 0;
    if (k < spatial) {
      const T* base = x + n * channels * spatial + k;
      for (std::int64_t c = threadIdx.y; c < channels; c += kMapRows) sum += abs_power<K>(static_cast<Acc>(to_acc(base[c * spatial])), p);
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && k < spatial) {
      Acc total = 0;
#pragma unroll
      for (int r = 0; r < kMapRows; ++r) total += partial[r][threadIdx.x];
      a[n * spatial + k] = total * inv_c;
    }
    __syncthreads();
  }
}

// Channels-last: a warp per (sample, position), lanes along the contiguous channels.
template <PowerKind K, typename T, typename Acc>
__global__ void __launch_bounds__(kBlock) attention_map_channels_last_kernel(
    const T* x, std::int64_t positions, std::int64_t channels, Acc p, Acc* a) {
  using WarpReduce = cub::WarpReduce<Acc>;
  __shared__ typename WarpReduce::TempStorage storage[kBlock / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const Acc inv_c = reciprocal(static_cast<Acc>(channels));
  for (std::int64_t pos = static_cast<std::int64_t>(blockIdx.x) * (kBlock / 32) + warp; pos < positions;
       pos += static_cast<std::int64_t>(gridDim.x) * (kBlock / 32)) {
    const T* base = x + pos * channels;
    Acc sum = 0;
    for (std::int64_t c = lane; c < channels; c += 32) sum += abs_power<K>(static_cast<Acc>(to_acc(base[c])), p);
    const Acc total = WarpReduce(storage[warp]).Sum(sum);
    if (lane == 0) a[pos] = total * inv_c;
  }
}

// grad = dL/da[n, k] * (1/C) * d|x|^p/dx, elementwise in memory order.
template <PowerKind K, typename T, typename Acc>
__global__ void __launch_bounds__(kBlock) attention_gradient_kernel(const T* x, T* grad, std::int64_t numel,
                                                                    std::int64_t channels, std::int64_t spatial,
                                                                    bool channels_last, Acc p, const Acc* d) {
  const Acc inv_c = reciprocal(static_cast<Acc>(channels));
  const std::int64_t per_sample = channels * spatial;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x; i < numel;
       i += static_cast<std::int64_t>(gridDim.x) * kBlock) {
    const std::int64_t n = i / per_sample, within = i % per_sample;
    const std::int64_t k = channels_last ? within / channels : within % spatial;
    const Acc v = static_cast<Acc>(to_acc(x[i]));
    grad[i] = from_acc<T>(static_cast<acc_t<T>>(d[n * spatial + k] * inv_c * abs_power_derivative<K>(v, p)));
  }
}

template <typename Acc>
struct Sums3 {
  Acc a, b, c;
  __device__ __forceinline__ Sums3 operator+(const Sums3& o) const { return {a + o.a, b + o.b, c + o.c}; }
};

// A block per row of a_s / a_t ([rows, cols]): norms, the row loss and the gradients of
// scale * ||A_s - A_t||^2 (docs/math.md).
template <typename Acc>
__global__ void __launch_bounds__(kBlock) normalized_rows_kernel(const Acc* a_s, const Acc* a_t, std::int64_t rows,
                                                                 std::int64_t cols, Acc scale, Acc* row_loss, Acc* d_s,
                                                                 Acc* d_t) {
  using Reduce = cub::BlockReduce<Sums3<Acc>, kBlock>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ Sums3<Acc> shared;
  const Acc two_scale = Acc(2) * scale;
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Acc* s = a_s + r * cols;
    const Acc* t = a_t + r * cols;
    Sums3<Acc> local{0, 0, 0};
    for (std::int64_t k = threadIdx.x; k < cols; k += kBlock) {
      local.a += s[k] * s[k];
      local.b += t[k] * t[k];
    }
    Sums3<Acc> total = Reduce(storage).Reduce(local, Plus{});
    if (threadIdx.x == 0) shared = total;
    __syncthreads();
    const RowNorm<Acc> norm_s = row_norm(shared.a), norm_t = row_norm(shared.b);
    const Acc inv_s = reciprocal(norm_s.divisor), inv_t = reciprocal(norm_t.divisor);
    __syncthreads();
    local = {0, 0, 0};  // loss, sum A_s e, sum A_t e with e = dL/dA_s
    for (std::int64_t k = threadIdx.x; k < cols; k += kBlock) {
      const Acc as = s[k] * inv_s, at = t[k] * inv_t, diff = as - at;
      local.a += diff * diff;
      local.b += as * two_scale * diff;
      local.c += at * two_scale * diff;
    }
    total = Reduce(storage).Reduce(local, Plus{});
    if (threadIdx.x == 0) shared = total;
    __syncthreads();
    const Sums3<Acc> sums = shared;
    if (threadIdx.x == 0) row_loss[r] = scale * sums.a;
    for (std::int64_t k = threadIdx.x; k < cols; k += kBlock) {
      const Acc as = s[k] * inv_s, at = t[k] * inv_t, e = two_scale * (as - at);
      if (d_s) d_s[r * cols + k] = normalize_backward(e, as, sums.b, norm_s, inv_s);
      if (d_t) d_t[r * cols + k] = normalize_backward(-e, at, -sums.c, norm_t, inv_t);
    }
    __syncthreads();
  }
}

template <typename Acc>
void attention_side(const FeatureMap& map, std::int64_t batch, std::int64_t spatial, double p, Acc* a, const Acc* d,
                    void* grad, cudaStream_t stream) {
  dispatch_dtype(map.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_power_kind(p, [&](auto kind) {
      constexpr PowerKind K = decltype(kind)::value;
      const T* x = static_cast<const T*>(map.data);
      if (d) {
        const std::int64_t numel = batch * map.channels * spatial;
        attention_gradient_kernel<K, T, Acc><<<grid_size(numel, kBlock, kBlock), kBlock, 0, stream>>>(
            x, static_cast<T*>(grad), numel, map.channels, spatial, map.channels_last, static_cast<Acc>(p), d);
      } else if (map.channels_last) {
        attention_map_channels_last_kernel<K, T, Acc><<<grid_size(batch * spatial, kBlock / 32, kBlock), kBlock, 0,
                                                        stream>>>(x, batch * spatial, map.channels,
                                                                  static_cast<Acc>(p), a);
      } else {
        const std::int64_t tiles = batch * ((spatial + 31) / 32);
        attention_map_channels_first_kernel<K, T, Acc><<<grid_size(tiles, 1, 32 * kMapRows), dim3(32, kMapRows), 0,
                                                         stream>>>(x, batch, map.channels, spatial,
                                                                   static_cast<Acc>(p), a);
      }
      FUSEDKD_CUDA_CHECK(cudaGetLastError());
    });
  });
}

template <typename Acc>
void launch_normalized_rows(const Acc* a_s, const Acc* a_t, std::int64_t rows, std::int64_t cols, double scale,
                            Acc* row_loss, Acc* d_s, Acc* d_t, cudaStream_t stream) {
  normalized_rows_kernel<Acc><<<grid_size(rows, 1, kBlock), kBlock, 0, stream>>>(a_s, a_t, rows, cols,
                                                                                 static_cast<Acc>(scale), row_loss,
                                                                                 d_s, d_t);
  FUSEDKD_CUDA_CHECK(cudaGetLastError());
}

template <typename Acc>
void launch_attention_transfer(const AttentionTransferArgs& a, cudaStream_t stream) {
  const detail::NormalizedRowsWorkspace<Acc> workspace(a.workspace, a.batch, a.spatial);
  Acc *a_s = workspace.a_s, *a_t = workspace.a_t, *d_s = workspace.d_s, *d_t = workspace.d_t;
  Acc* row_loss = a.per_row_loss ? static_cast<Acc*>(a.loss) : workspace.row_loss;
  attention_side<Acc>(a.student, a.batch, a.spatial, a.p, a_s, nullptr, nullptr, stream);
  attention_side<Acc>(a.teacher, a.batch, a.spatial, a.p, a_t, nullptr, nullptr, stream);
  launch_normalized_rows<Acc>(a_s, a_t, a.batch, a.spatial, a.scale, row_loss, a.grad_student ? d_s : nullptr,
                              a.grad_teacher ? d_t : nullptr, stream);
  if (!a.per_row_loss) {
    sum_kernel<<<1, kReduceBlock, 0, stream>>>(row_loss, a.batch, 1.0, static_cast<Acc*>(a.loss));
    FUSEDKD_CUDA_CHECK(cudaGetLastError());
  }
  if (a.grad_student) attention_side<Acc>(a.student, a.batch, a.spatial, a.p, nullptr, d_s, a.grad_student, stream);
  if (a.grad_teacher) attention_side<Acc>(a.teacher, a.batch, a.spatial, a.p, nullptr, d_t, a.grad_teacher, stream);
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

template <typename Acc>
void zero_loss(void* loss, cudaStream_t stream) {
  FUSEDKD_CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(Acc), stream));
}

}  // namespace
}  // namespace fusedkd::cuda

namespace fusedkd {

void feature_mse_cuda(const FeatureMseArgs& args, CUstream_st* stream) {
  detail::validate(args);
  if (args.numel == 0) {
    if (args.elementwise_loss) return;
    if (feature_mse_uses_double(args)) cuda::zero_loss<double>(args.loss, stream);
    else cuda::zero_loss<float>(args.loss, stream);
    return;
  }
  cuda::launch_feature_mse(args, stream);
}

void attention_transfer_cuda(const AttentionTransferArgs& args, CUstream_st* stream) {
  detail::validate(args);
  const bool is_double = attention_transfer_uses_double(args);
  if (args.batch == 0) {
    if (args.per_row_loss) return;
    if (is_double) cuda::zero_loss<double>(args.loss, stream);
    else cuda::zero_loss<float>(args.loss, stream);
    return;
  }
  if (is_double) cuda::launch_attention_transfer<double>(args, stream);
  else cuda::launch_attention_transfer<float>(args, stream);
}

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

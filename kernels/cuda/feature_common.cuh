// What the CUDA feature-map launchers share (feature.cu, feature_gemm.cu): the fixed-order sum of
// partials, the normalised-row loss of attention transfer and similarity preserving (a block per
// row: norms, the loss and the gradients of scale * ||A_s - A_t||^2, docs/math.md), and zeroing a
// loss.
#pragma once

#include <cub/block/block_reduce.cuh>

#include "cuda_utils.cuh"
#include "fusedkd/feature_math.h"
#include "fusedkd/math.h"

namespace fusedkd::cuda {
namespace {

constexpr int kBlock = 256;
constexpr int kReduceBlock = 1024;

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
void launch_normalized_rows(const Acc* a_s, const Acc* a_t, std::int64_t rows, std::int64_t cols, double scale,
                            Acc* row_loss, Acc* d_s, Acc* d_t, cudaStream_t stream) {
  normalized_rows_kernel<Acc><<<grid_size(rows, 1, kBlock), kBlock, 0, stream>>>(a_s, a_t, rows, cols,
                                                                                 static_cast<Acc>(scale), row_loss,
                                                                                 d_s, d_t);
  FUSEDKD_CUDA_CHECK(cudaGetLastError());
}

template <typename Acc>
void zero_loss(void* loss, cudaStream_t stream) {
  FUSEDKD_CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(Acc), stream));
}

}  // namespace
}  // namespace fusedkd::cuda

// CUDA feature_mse and attention_transfer (feature_gemm.cu has the two losses built on cuBLAS).
// COMPILED, NOT YET RUN ON A GPU (see docs/architecture.md).
//
// feature_mse: one grid-stride pass in memory order, 8 elements per thread per step (16-byte
// vector loads when every array is 16-byte aligned), the loss and the gradients from the same
// read; per-block partial sums in double, then one block adds them in block order.
// attention_transfer: one read of each map for a(x) = mean_c |x|^p (channels-first: lanes along
// space, channels split over the block's rows; channels-last: a warp per position, lanes along
// channels), a block per sample for the normalisation, the loss and dL/da, then (with a
// gradient) a second, elementwise read of x that writes the gradient.
// No floating-point atomics anywhere.
#include <cub/warp/warp_reduce.cuh>

#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "elementwise.cuh"
#include "feature_common.cuh"
#include "fusedkd/feature.h"
#include "fusedkd/feature_math.h"
#include "../validate.h"
#include "../workspace.h"

namespace fusedkd::cuda {
namespace {

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

// Elements [first, first + kItems); the gradients overwrite the loaded values.
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

}  // namespace
}  // namespace fusedkd::cuda

namespace fusedkd {

void feature_mse_cuda(const FeatureMseArgs& args, CUstream_st* stream) {
  detail::validate(args);
  detail::check_cuda_gradient_dtypes(args.float16_gradients_in_float32, "feature_mse_cuda");
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
  detail::check_cuda_gradient_dtypes(args.float16_gradients_in_float32, "attention_transfer_cuda");
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

}  // namespace fusedkd

// CUDA gradient scaling (fusedkd/scale.h): one factor for all elements or one per element (a
// grid-stride elementwise kernel), or one per row (a block per row, chunked by the row's
// alignment). A single or per-row factor of exactly 1 skips its elements: no load, no store.
#include <limits>
#include <stdexcept>

#include "elementwise.cuh"
#include "row_tile.cuh"
#include "fusedkd/scale.h"
#include "../scale_rows.h"
#include "../validate.h"

namespace fusedkd::cuda {
namespace {

// One factor for all (`single`; nothing is touched when it is exactly 1) or one per element.
template <bool VECTOR, typename T, typename F>
__global__ void __launch_bounds__(kElementwiseBlock) scale_elements_kernel(T* data, std::int64_t numel, const F* factors,
                                                                bool single) {
  using Acc = acc_t<T>;
  if (single && factors[0] == F(1)) return;  // loss.backward(): no load, no store
  const std::int64_t steps = numel / kItems;
  for (std::int64_t step = static_cast<std::int64_t>(blockIdx.x) * kElementwiseBlock + threadIdx.x; step < steps;
       step += static_cast<std::int64_t>(gridDim.x) * kElementwiseBlock) {
    const std::int64_t first = step * kItems;
    Acc v[kItems];
    load_items<VECTOR>(data + first, v);
#pragma unroll
    for (int k = 0; k < kItems; ++k) v[k] *= static_cast<Acc>(factors[single ? 0 : first + k]);
    store_items<VECTOR>(data + first, v);
  }
  const std::int64_t i = steps * kItems + threadIdx.x;
  if (blockIdx.x == 0 && i < numel)
    data[i] = from_acc<T>(static_cast<Acc>(to_acc(data[i]) * static_cast<Acc>(factors[single ? 0 : i])));
}

template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK) scale_rows_kernel(T* grad, std::int64_t rows, int cols,
                                                           const acc_t<T>* factors, bool per_row) {
  using Acc = acc_t<T>;
  constexpr int N = Pack<T>::kWidth;
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const Acc factor = factors[per_row ? row : 0];
    if (factor == Acc(1)) continue;  // the common loss.backward(): no load, no store
    T* g = grad + row * cols;
    const int head = chunk_head<T, N>(g);
    const std::int64_t chunks = chunk_count(cols, head, N);
    for (std::int64_t c = threadIdx.x; c < chunks; c += BLOCK) {
      Acc v[N];
      load_chunk<T, N>(g, cols, head, c, true, /*streaming=*/true, v, Acc(0));
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] *= factor;
      store_chunk<T, N>(g, cols, head, c, true, v);
    }
  }
}

}  // namespace
}  // namespace fusedkd::cuda

namespace fusedkd {

void scale_elements_cuda(const ScaleElementsArgs& args, CUstream_st* stream) {
  detail::validate(args);
  if (args.numel == 0) return;
  if (detail::scales_by_rows(args)) return scale_rows_cuda(detail::as_rows(args), stream);
  const bool single = args.factor_group >= args.numel;
  const unsigned int grid = cuda::elementwise_grid(args.numel);
  const bool vector = cuda::aligned16(args.data);
  cuda::dispatch_dtype(args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* data = static_cast<T*>(args.data);
    const auto launch = [&](auto factor_tag) {
      using F = decltype(factor_tag);
      const F* factors = static_cast<const F*>(args.factors);
      if (vector) cuda::scale_elements_kernel<true><<<grid, cuda::kElementwiseBlock, 0, stream>>>(data, args.numel, factors, single);
      else cuda::scale_elements_kernel<false><<<grid, cuda::kElementwiseBlock, 0, stream>>>(data, args.numel, factors, single);
    };
    if (args.factors_are_double) launch(double{});
    else launch(float{});
    FUSEDKD_CUDA_CHECK(cudaGetLastError());
  });
}

void scale_rows_cuda(const ScaleRowsArgs& args, CUstream_st* stream) {
  detail::validate(args);
  if (args.rows == 0 || args.cols == 0) return;
  if (args.cols > std::numeric_limits<int>::max())
    throw std::invalid_argument("fusedkd: scale_rows_cuda: cols must fit in 32 bits");
  constexpr int kBlock = 256;
  cuda::dispatch_dtype(args.grad_dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Acc = cuda::acc_t<T>;
    if (args.grad_output_is_double != std::is_same_v<Acc, double>)
      throw std::invalid_argument("fusedkd: grad_output must have the loss dtype of the gradient");
    cuda::scale_rows_kernel<T, kBlock><<<cuda::grid_size(args.rows, 1, kBlock), kBlock, 0, stream>>>(
        static_cast<T*>(args.grad), args.rows, static_cast<int>(args.cols),
        static_cast<const Acc*>(args.grad_output), args.per_row);
  });
  FUSEDKD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fusedkd

// Elementwise kernels' pieces (feature_mse, gradient scaling): a grid-stride loop over the array in
// steps of kItems elements per thread, as aligned 16-byte vectors when every array allows.
#pragma once

#include "cuda_utils.cuh"
#include "../workspace.h"

namespace fusedkd::cuda {

constexpr int kElementwiseBlock = 256;
constexpr int kItems = 8;  // elements per thread per step

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

inline unsigned int elementwise_grid(std::int64_t numel) {
  const std::int64_t blocks = grid_size((numel + kItems - 1) / kItems, kElementwiseBlock, kElementwiseBlock);
  return static_cast<unsigned int>(blocks < detail::kFeatureMaxBlocks ? blocks : detail::kFeatureMaxBlocks);
}

// kItems consecutive elements as accumulation values: aligned 16-byte loads when VECTOR.
template <bool VECTOR, typename T, typename Acc>
__device__ __forceinline__ void load_items(const T* p, Acc (&v)[kItems]) {
  if constexpr (VECTOR) {
    constexpr int N = Pack<T>::kWidth;
#pragma unroll
    for (int j = 0; j < kItems; j += N) {
      const Pack<T, N> pack = load_pack<T, N>(p + j, /*streaming=*/true);
#pragma unroll
      for (int k = 0; k < N; ++k) v[j + k] = static_cast<Acc>(to_acc(pack.v[k]));
    }
  } else {
#pragma unroll
    for (int k = 0; k < kItems; ++k) v[k] = static_cast<Acc>(to_acc(p[k]));
  }
}

template <bool VECTOR, typename T, typename Acc>
__device__ __forceinline__ void store_items(T* p, const Acc (&v)[kItems]) {
  if constexpr (VECTOR) {
    constexpr int N = Pack<T>::kWidth;
#pragma unroll
    for (int j = 0; j < kItems; j += N) {
      Pack<T, N> pack;
#pragma unroll
      for (int k = 0; k < N; ++k) pack.v[k] = from_acc<T>(static_cast<acc_t<T>>(v[j + k]));
      store_pack<T, N>(p + j, pack);
    }
  } else {
#pragma unroll
    for (int k = 0; k < kItems; ++k) p[k] = from_acc<T>(static_cast<acc_t<T>>(v[k]));
  }
}

}  // namespace fusedkd::cuda

// Small CUDA helpers shared by the kernels: error checks, element types, 16-byte packs.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "fusedkd/dtype.h"

namespace fusedkd::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t error, const char* what, const char* file, int line);

#define FUSEDKD_CUDA_CHECK(expr)                                                 \
  do {                                                                           \
    const cudaError_t fusedkd_error_ = (expr);                                   \
    if (fusedkd_error_ != cudaSuccess)                                           \
      ::fusedkd::cuda::throw_cuda_error(fusedkd_error_, #expr, __FILE__, __LINE__); \
  } while (0)

// Streaming multiprocessors of the current device (looked up once per device).
int multiprocessor_count();

// Grid size for a kernel that strides over `work_items` items, `items_per_block` per block:
// enough blocks for every item, capped at a few waves (the kernels loop over the rest).
unsigned int grid_size(std::int64_t work_items, int items_per_block, int block_threads);

using fusedkd::acc_t;  // float for float/half/bfloat16 data, double for double

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) with the device element type of `dtype`.
template <typename Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: fn(TypeTag<float>{}); break;
    case DType::Float64: fn(TypeTag<double>{}); break;
    case DType::Float16: fn(TypeTag<__half>{}); break;
    case DType::BFloat16: fn(TypeTag<__nv_bfloat16>{}); break;
  }
}

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// 16 bytes of elements: the unit of every vector load and store.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kWidth = 16 / static_cast<int>(sizeof(T));
  T v[kWidth];
};

// Streaming (evict-first) load of data read once, and the default cached load for data a kernel
// reads twice; `p` must be 16-byte aligned.
template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p, bool streaming) {
  const int4 raw = streaming ? __ldcs(reinterpret_cast<const int4*>(p))
                             : __ldg(reinterpret_cast<const int4*>(p));
  Pack<T> pack;
  memcpy(&pack, &raw, sizeof(raw));
  return pack;
}

template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& pack) {
  int4 raw;
  memcpy(&raw, &pack, sizeof(raw));
  __stcs(reinterpret_cast<int4*>(p), raw);
}

}  // namespace fusedkd::cuda

// Small CUDA helpers shared by the kernels: error checks, device limits, element types and the
// (student, teacher) pairs the kernels take (dispatch_pair), 16-byte packs, a reduction functor.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "fusedkd/dtype.h"

namespace fusedkd::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t error, const char* what, const char* file, int line);

#define FUSEDKD_CUDA_CHECK(expr)                                                 \
  do {                                                                           \
    const cudaError_t fusedkd_error_ = (expr);                                   \
    if (fusedkd_error_ != cudaSuccess)                                           \
      ::fusedkd::cuda::throw_cuda_error(fusedkd_error_, #expr, __FILE__, __LINE__); \
  } while (0)

// What the kernels' launch plans need to know of the current device (looked up once per device).
struct DeviceLimits {
  int multiprocessors = 0;
  int major = 0;                          // compute capability
  std::size_t shared_per_block_optin = 0;  // shared memory a block may opt in to
};
const DeviceLimits& device_limits();

// Streaming multiprocessors of the current device.
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

// A (student, teacher) pair of device element types: the type both compute in (double when either
// is double, else float) and the elements per chunk when both are read alike (16 bytes of the
// wider type).
template <typename TS, typename TT>
struct PairTraits {
  using Acc = std::conditional_t<std::is_same_v<TS, double> || std::is_same_v<TT, double>, double, float>;
  static constexpr int kWidth = 16 / static_cast<int>(sizeof(TS) > sizeof(TT) ? sizeof(TS) : sizeof(TT));
};

// Calls fn(TypeTag<TS>{}, TypeTag<TT>{}) for a pair the kernels take (cuda_kernels_take, the one
// rule: only those pairs are instantiated); std::invalid_argument naming `op` for any other.
template <typename Fn>
void dispatch_pair(DType student, DType teacher, const char* op, Fn&& fn) {
  if (!cuda_kernels_take(student, teacher))
    throw std::invalid_argument(std::string("fusedkd: ") + op + " does not take student " + dtype_name(student) +
                                " with teacher " + dtype_name(teacher) + " (cuda_kernel_dtypes gives the pair to use)");
  if (student == teacher) {
    return dispatch_dtype(student, [&](auto tag) { fn(tag, tag); });
  }
  const bool float_student = student == DType::Float32;
  const DType half = float_student ? teacher : student;  // the 16-bit side
  const auto with_half = [&](auto half_tag) {
    if (float_student) fn(TypeTag<float>{}, half_tag);
    else fn(half_tag, TypeTag<float>{});
  };
  if (half == DType::Float16) with_half(TypeTag<__half>{});
  else with_half(TypeTag<__nv_bfloat16>{});
}

// a + b, for the block and warp reductions (any type with an operator+).
struct Plus {
  template <typename V>
  __device__ __forceinline__ V operator()(const V& a, const V& b) const {
    return a + b;
  }
};

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

// N elements loaded or stored as one aligned vector (N * sizeof(T) = 16 or 8 bytes): 16 bytes for
// one array alone, fewer for the narrower of two arrays of different widths chunked alike.
template <typename T, int N = 16 / static_cast<int>(sizeof(T))>
struct alignas(N * sizeof(T)) Pack {
  static constexpr int kWidth = N;
  T v[N];
};

template <int BYTES>
struct VectorWord;
template <>
struct VectorWord<16> {
  using type = int4;
};
template <>
struct VectorWord<8> {
  using type = int2;
};

// Streaming (evict-first) load of data read once, and the default cached load for data a kernel
// reads again; `p` must be aligned to the pack size.
template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p, bool streaming) {
  using Word = typename VectorWord<N * sizeof(T)>::type;
  Pack<T, N> pack;
  *reinterpret_cast<Word*>(&pack) =
      streaming ? __ldcs(reinterpret_cast<const Word*>(p)) : __ldg(reinterpret_cast<const Word*>(p));
  return pack;
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& pack) {
  using Word = typename VectorWord<N * sizeof(T)>::type;
  __stcs(reinterpret_cast<Word*>(p), *reinterpret_cast<const Word*>(&pack));
}

}  // namespace fusedkd::cuda

// Compiler glue shared by the CPU and the CUDA kernels.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FUSEDKD_HD __host__ __device__ __forceinline__
#else
// always_inline: the CPU kernels call these helpers inside `omp simd` loops, which vectorise only
// when every call in the body has been inlined.
#define FUSEDKD_HD inline __attribute__((always_inline))
#endif

// Unrolls the loop that follows in device code, where per-thread arrays must be indexed by
// compile-time constants to stay in registers; nothing on the host.
#if defined(__CUDA_ARCH__)
#define FUSEDKD_UNROLL _Pragma("unroll")
#else
#define FUSEDKD_UNROLL
#endif

namespace fusedkd {

// Reinterpret the bits of one trivially copyable type as another of the same size.
template <typename To, typename From>
FUSEDKD_HD To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs types of one size");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

}  // namespace fusedkd

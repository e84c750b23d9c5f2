// Element types the kernels read and write, and the host-side 16-bit float storage types.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fusedkd/config.h"

namespace fusedkd {

enum class DType : std::int8_t { Float32, Float64, Float16, BFloat16 };

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "unknown";
}

// A (student, teacher) pair of element types.
struct DTypePair {
  DType student;
  DType teacher;
};

// The (student, teacher) pairs the CUDA kernels of two-input losses take (soft-target losses,
// feature_mse): one dtype for both, or float32 with a 16-bit float on either side (what
// mixed-precision training produces). The one rule: the kernels instantiate exactly these pairs.
bool cuda_kernels_take(DType student, DType teacher);

// The pair a CUDA kernel computes a (student, teacher) pair in: the pair itself where the kernels
// take it (cuda_kernels_take), else a promotion, never a demotion: float64 on either side
// runs both in float64; a float16/bfloat16 mix reads the teacher as float32. The loss dtype is
// the same before and after (loss_dtype); the gradients are cast back to their inputs' dtypes.
DTypePair cuda_kernel_dtypes(DType student, DType teacher);

// The dtype of every loss of a (student, teacher) pair: float64 when either is float64, else
// float32 (the spec's rule, on every backend).
DType loss_dtype(DType student, DType teacher);

// The dtype a CPU kernel writes the gradient of an input stored as `input` in: the input's, or
// float32 for float16 when asked (the loss ops' float16_gradients_in_float32: the torch ops keep a
// float16 input's gradient in float32 until it is scaled by grad_output, torch_ext/autograd.h).
inline DType gradient_dtype(DType input, bool float16_gradients_in_float32) {
  return float16_gradients_in_float32 && input == DType::Float16 ? DType::Float32 : input;
}

inline std::size_t dtype_size(DType dtype) {
  return dtype == DType::Float64 ? 8 : dtype == DType::Float32 ? 4 : 2;
}

// Storage-only 16-bit floats for the CPU kernels (the CUDA kernels use __half / __nv_bfloat16).
struct Half {
  std::uint16_t bits;
};
struct BFloat16 {
  std::uint16_t bits;
};

// IEEE binary16 -> binary32, exact, branch-free (vectorises): normal numbers are rebiased by a
// multiply, subnormals come from a magic-number subtraction.
FUSEDKD_HD float half_to_float(Half h) {
  const std::uint32_t w = static_cast<std::uint32_t>(h.bits) << 16;
  const std::uint32_t sign = w & 0x80000000u;
  const std::uint32_t two_w = w + w;
  const float normal = bit_cast<float>((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  const std::uint32_t magnitude =
      two_w < (1u << 27) ? bit_cast<std::uint32_t>(subnormal) : bit_cast<std::uint32_t>(normal);
  return bit_cast<float>(sign | magnitude);
}

// binary32 -> binary16, round to nearest even; overflow gives inf, NaN stays NaN.
FUSEDKD_HD Half float_to_half(float f) {
  // Scaling up then down lets the FPU do the rounding at the binary16 precision.
  float base = (f < 0 ? -f : f) * 0x1.0p+112f * 0x1.0p-110f;
  const std::uint32_t w = bit_cast<std::uint32_t>(f);
  const std::uint32_t shl1_w = w + w;
  const std::uint32_t sign = w & 0x80000000u;
  std::uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = bit_cast<float>((bias >> 1) + 0x07800000u) + base;
  const std::uint32_t bits = bit_cast<std::uint32_t>(base);
  const std::uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return Half{static_cast<std::uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
}

FUSEDKD_HD float bfloat16_to_float(BFloat16 b) {
  return bit_cast<float>(static_cast<std::uint32_t>(b.bits) << 16);
}

// binary32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
FUSEDKD_HD BFloat16 float_to_bfloat16(float f) {
  const std::uint32_t u = bit_cast<std::uint32_t>(f);
  const bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return BFloat16{static_cast<std::uint16_t>(is_nan ? ((u >> 16) | 0x40u) : rounded)};
}

// The type the kernels compute in for storage type T: float, or double for double data.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

// Loading any storage type as its accumulation type, and storing back.
FUSEDKD_HD float load_as_acc(float x) { return x; }
FUSEDKD_HD double load_as_acc(double x) { return x; }
FUSEDKD_HD float load_as_acc(Half x) { return half_to_float(x); }
FUSEDKD_HD float load_as_acc(BFloat16 x) { return bfloat16_to_float(x); }

template <typename T>
struct StoreFromAcc;
template <>
struct StoreFromAcc<float> {
  FUSEDKD_HD static float apply(float x) { return x; }
};
template <>
struct StoreFromAcc<double> {
  FUSEDKD_HD static double apply(double x) { return x; }
};
template <>
struct StoreFromAcc<Half> {
  FUSEDKD_HD static Half apply(float x) { return float_to_half(x); }
};
template <>
struct StoreFromAcc<BFloat16> {
  FUSEDKD_HD static BFloat16 apply(float x) { return float_to_bfloat16(x); }
};

}  // namespace fusedkd

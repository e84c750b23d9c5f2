// The math of the feature-map losses, written once for the CPU and the CUDA kernels.
// Derivations: docs/math.md, "Feature-map losses".
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "fusedkd/config.h"

namespace fusedkd {

// One element of feature_mse (and of the projection's squared error): d = s - t, its share of the
// summed loss d^2, its elementwise loss scale d^2, and the student's gradient 2 scale d (the
// teacher's is the negative).
template <typename Acc>
struct MseElement {
  Acc squared, loss, grad;
};
template <typename Acc>
FUSEDKD_HD MseElement<Acc> mse_element(Acc s, Acc t, Acc scale) {
  const Acc d = s - t;
  return {d * d, scale * d * d, Acc(2) * scale * d};
}

// F.normalize's eps: a row is divided by max(||row||_2, eps).
constexpr double kNormalizeEps = 1e-12;

FUSEDKD_HD float square_root(float x) {
#if defined(__CUDA_ARCH__)
  return sqrtf(x);
#else
  return std::sqrt(x);
#endif
}
FUSEDKD_HD double square_root(double x) {
#if defined(__CUDA_ARCH__)
  return sqrt(x);
#else
  return std::sqrt(x);
#endif
}
FUSEDKD_HD float power(float x, float y) {
#if defined(__CUDA_ARCH__)
  return powf(x, y);
#else
  return std::pow(x, y);
#endif
}
// x >= 0 only (the magnitudes of attention transfer). On the GPU, double pow's out-of-line slow
// path would cost a stack frame: exp2(y log2 x) is exact enough (relative error ~ |y log2 x| 2^-53).
FUSEDKD_HD double power(double x, double y) {
#if defined(__CUDA_ARCH__)
  return x == 0.0 ? (y > 0.0 ? 0.0 : (y == 0.0 ? 1.0 : HUGE_VAL)) : (x != x ? x : exp2(y * log2(x)));
#else
  return std::pow(x, y);
#endif
}

// The exponent of attention transfer's |x|^p, as a compile-time case: p = 1 and p = 2 need no pow.
enum class PowerKind : std::int8_t { One, Two, General };
inline PowerKind power_kind(double p) {
  return p == 1.0 ? PowerKind::One : p == 2.0 ? PowerKind::Two : PowerKind::General;
}

// Calls fn(std::integral_constant<PowerKind, K>{}) for p's case (host code, either backend).
template <typename Fn>
void dispatch_power_kind(double p, Fn&& fn) {
  switch (power_kind(p)) {
    case PowerKind::One: fn(std::integral_constant<PowerKind, PowerKind::One>{}); break;
    case PowerKind::Two: fn(std::integral_constant<PowerKind, PowerKind::Two>{}); break;
    case PowerKind::General: fn(std::integral_constant<PowerKind, PowerKind::General>{}); break;
  }
}

template <PowerKind K, typename Acc>
FUSEDKD_HD Acc abs_power(Acc x, Acc p) {
  const Acc magnitude = x < Acc(0) ? -x : x;  // NaN stays NaN
  if constexpr (K == PowerKind::One) return magnitude;
  else if constexpr (K == PowerKind::Two) return x * x;
  else return power(magnitude, p);
}

// d|x|^p / dx = p |x|^(p-1) sign(x); 0 at x = 0 for every p (the subgradient 0 where p <= 1).
// A NaN x gives NaN.
template <PowerKind K, typename Acc>
FUSEDKD_HD Acc abs_power_derivative(Acc x, Acc p) {
  if constexpr (K == PowerKind::Two) {
    return Acc(2) * x;
  } else {
    const Acc sign = x > Acc(0) ? Acc(1) : x < Acc(0) ? Acc(-1) : x == Acc(0) ? Acc(0) : x;
    if constexpr (K == PowerKind::One) {
      return sign;
    } else {
      const Acc magnitude = x < Acc(0) ? -x : x;
      return x == Acc(0) ? Acc(0) : p * power(magnitude, p - Acc(1)) * sign;
    }
  }
}

// The divisor of a row normalised like F.normalize: max(||a||, eps). `above_eps`: the norm itself
// is the divisor, so the gradient carries the projection term (docs/math.md).
template <typename Acc>
struct RowNorm {
  Acc divisor;
  bool above_eps;
};

template <typename Acc>
FUSEDKD_HD RowNorm<Acc> row_norm(Acc sum_of_squares) {
  const Acc norm = square_root(sum_of_squares);
  const bool above = norm > Acc(kNormalizeEps);
  return {above ? norm : Acc(kNormalizeEps), above};
}

// dL/da_k for A = a / max(||a||, eps), given e_k = dL/dA_k, dot = sum_j A_j e_j and
// inv_divisor = 1 / norm.divisor.
template <typename Acc>
FUSEDKD_HD Acc normalize_backward(Acc e, Acc normalized, Acc dot, const RowNorm<Acc>& norm, Acc inv_divisor) {
  return (e - (norm.above_eps ? normalized * dot : Acc(0))) * inv_divisor;
}

// Channel of element i of a dense [N, C, S] array (channels-first: inner = S; channels-last:
// inner = 1).
FUSEDKD_HD std::int64_t channel_of(std::int64_t i, std::int64_t inner, std::int64_t channels) {
  return (i / inner) % channels;
}

}  // namespace fusedkd

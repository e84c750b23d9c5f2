// The math of the row-wise ops, written once and used by both the CPU and the CUDA kernels.
// Derivations: docs/math.md.
#pragma once

#include <cmath>
#include <limits>

#include "fusedkd/config.h"

namespace fusedkd {

constexpr double kLog2e = 1.4426950408889634;  // log2(e)

// The temperature as the kernels use it, under one pair of names everywhere: `inv_t` = 1 / T
// scales a logit difference; `scale_log2` = log2(e) / T turns one into a base-2 exponent (exp2 is
// the hardware's exponential). Computed once per launch, in double, then rounded to Acc.
template <typename Acc>
struct Temperature {
  Acc inv_t;
  Acc scale_log2;
  FUSEDKD_HD static Temperature of(double temperature) {
    return {static_cast<Acc>(1.0 / temperature), static_cast<Acc>(kLog2e / temperature)};
  }
};

template <typename Acc>
FUSEDKD_HD Acc neg_infinity() {
  return -std::numeric_limits<Acc>::infinity();
}

// 2^f for |f| <= 1/2, the polynomial of exp2_nonpositive below, for float or, on the CPU, a
// vector of floats (kernels/cpu/vector_math.h): written once so that both give the same bits.
template <typename F>
FUSEDKD_HD F exp2_fraction(F f) {
  F p = f * 1.5345798328785312e-04f + 1.3399931110218734e-03f;
  p = p * f + 9.618489007968065e-03f;
  p = p * f + 5.550328777304883e-02f;
  p = p * f + 2.4022646890164073e-01f;
  p = p * f + 6.931472057370580e-01f;
  return p * f + 1.0f;  // 1.0000000005542309, rounded: 2^0 is exactly 1
}

// 2^x for x <= 0 (or NaN), the only range the softmax family needs (logits minus their maximum).
// On the GPU this is the hardware exp2; on the CPU a branch-free polynomial that vectorises:
// x = n + f with n integral and |f| <= 1/2, 2^f from a degree-6 polynomial fitted for relative
// error on [-1/2, 1/2] (2e-9 in exact arithmetic), 2^n built in the exponent bits. The whole
// function's relative error over [-126, 0] in float: worst 7.9e-8 (0.93 units in the last place),
// mean 2.2e-8 (every 1e-5, measured 2026-12-01). A degree-5 polynomial (one multiply-add fewer,
// the statistics sweep about 7% faster on AVX-512) gave worst 1.7e-7 (2 units), mean 5.6e-8, and
// softmax_t outputs less accurate than torch.softmax's on long peaked rows on an AVX2 machine
// (python/tests/test_numerics.py); it was dropped. Results below 2^-126 flush to 0; a NaN argument
// gives NaN.
FUSEDKD_HD float exp2_nonpositive(float x) {
#if defined(__CUDA_ARCH__)
  return exp2f(x);
#else
  const float clamped = x < -126.0f ? -126.0f : x;  // NaN fails the test and stays NaN
  constexpr float kRound = 12582912.0f;            // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = clamped + kRound;
  const float n = shifted - kRound;
  const float f = clamped - n;
  const float p = exp2_fraction(f);
  // The low mantissa bits of `shifted` hold n; n + 127 is the biased exponent of 2^n.
  const std::int32_t n_int = bit_cast<std::int32_t>(shifted) - bit_cast<std::int32_t>(kRound);
  const float scale = bit_cast<float>(static_cast<std::uint32_t>(n_int + 127) << 23);
  return x < -126.0f ? 0.0f : p * scale;
#endif
}

FUSEDKD_HD double exp2_nonpositive(double x) { return exp2(x); }

// e * e for 0 <= e <= 1 (an exponential from the square root of its numerator, exp(x) =
// exp(x / 2)^2), 0 where the square would fall below the smallest normal number, as
// exp2_nonpositive flushes: no subnormal is formed (a slow path on some processors).
template <typename Acc>
FUSEDKD_HD Acc square_nonnegative(Acc e) {
  constexpr Acc kSmallest = sizeof(Acc) == 4 ? Acc(0x1p-63) : Acc(0x1p-511);  // sqrt of the smallest normal
  return e < kSmallest ? Acc(0) : e * e;
}

// 1 / x, correctly rounded. On the GPU the intrinsic keeps the division's rarely taken slow path
// (a called subroutine, which costs a stack frame) out of the kernels.
FUSEDKD_HD float reciprocal(float x) {
#if defined(__CUDA_ARCH__)
  return __frcp_rn(x);
#else
  return 1.0f / x;
#endif
}
FUSEDKD_HD double reciprocal(double x) {
#if defined(__CUDA_ARCH__)
  return __drcp_rn(x);
#else
  return 1.0 / x;
#endif
}

// Running state of a softmax over part of a row, in the temperature-scaled domain:
// `max` is the largest raw logit seen, `sum` = sum_j exp((x_j - max) / T).
template <typename Acc>
struct SoftmaxStats {
  Acc max;
  Acc sum;
};

// Merges two partial states (associative and commutative, so any reduction tree may use it).
// `scale_log2` = log2(e) / T converts a logit difference to a base-2 exponent. Differences are
// taken on raw logits before scaling, so a small T does not amplify the rounding of large logits.
template <typename Acc>
struct SoftmaxStatsMerge {
  Acc scale_log2;
  FUSEDKD_HD SoftmaxStats<Acc> operator()(const SoftmaxStats<Acc>& a,
                                          const SoftmaxStats<Acc>& b) const {
    const Acc m = a.max > b.max ? a.max : b.max;
    if (m == neg_infinity<Acc>()) return {m, Acc(0)};  // both empty (or all -inf so far)
    // A NaN max fails both comparisons above and turns the sum into NaN here.
    const Acc sum = a.sum * exp2_nonpositive((a.max - m) * scale_log2) +
                    b.sum * exp2_nonpositive((b.max - m) * scale_log2);
    return {m, sum};
  }
};

// exp((x - max) / T): a softmax numerator.
template <typename Acc>
FUSEDKD_HD Acc softmax_numerator(Acc x, Acc max, Acc scale_log2) {
  return exp2_nonpositive((x - max) * scale_log2);
}

// One element's share of the row sum, exp((x - max) / T), with exact zeros for -inf logits even
// when the max is -inf too (a slice of the row that is all masked); a NaN logit gives NaN.
template <typename Acc>
FUSEDKD_HD Acc softmax_sum_term(Acc x, Acc max, Acc scale_log2) {
  return x == neg_infinity<Acc>() ? Acc(0) : exp2_nonpositive((x - max) * scale_log2);
}

// log_softmax(x / T) given the row statistics, with log_sum = log(stats.sum).
template <typename Acc>
FUSEDKD_HD Acc log_softmax_value(Acc x, Acc max, Acc inv_t, Acc log_sum) {
  return (x - max) * inv_t - log_sum;
}

// Backward of y = softmax(x / T):  dx = (1/T) * y * (dy - sum_j dy_j y_j).
// For a nearly one-hot row dy_k and the dot product agree in most digits; the dot product is
// therefore accumulated in double and passed as an unevaluated sum dot_hi + dot_lo, so that
// dy_k - dot_hi is exact and the small remainder keeps its digits (docs/math.md).
template <typename Acc>
FUSEDKD_HD Acc softmax_backward_value(Acc dy, Acc y, Acc dot_hi, Acc dot_lo, Acc inv_t) {
  return inv_t * y * ((dy - dot_hi) - dot_lo);
}

// Splits a double into its nearest Acc and the remainder.
template <typename Acc>
struct SplitSum {
  Acc hi;
  Acc lo;
};
template <typename Acc>
FUSEDKD_HD SplitSum<Acc> split_sum(double sum) {
  const Acc hi = static_cast<Acc>(sum);
  return {hi, static_cast<Acc>(sum - static_cast<double>(hi))};
}

// Backward of z = log_softmax(x / T):  dx = (1/T) * (dy - exp(z) * sum_j dy_j).
template <typename Acc>
FUSEDKD_HD Acc log_softmax_backward_value(Acc dy, Acc z, Acc sum_dy, Acc inv_t) {
  return inv_t * (dy - exp2_nonpositive(z * Acc(kLog2e)) * sum_dy);
}

}  // namespace fusedkd

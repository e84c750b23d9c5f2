// Shared math (include/fusedkd/math.h) for 16 floats at once, written with AVX-512 intrinsics for
// the loops GCC's vectoriser builds poorly from the scalar code. Only in the avx512 copy of the
// CPU kernels (and in the test that checks it against the scalar functions).
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

#include "fusedkd/dtype.h"
#include "fusedkd/math.h"

namespace fusedkd::cpu {

constexpr bool kVectorMath = true;

// Calls step(j, lanes) over [j0, j1), 16 elements a step, the last partial step with the lanes
// past j1 masked off.
template <typename Step>
inline __attribute__((always_inline)) void for_each_x16(std::int64_t j0, std::int64_t j1, const Step& step) {
  std::int64_t j = j0;
  for (; j + 16 <= j1; j += 16) step(j, __mmask16(0xFFFF));
  if (j < j1) step(j, static_cast<__mmask16>((1u << (j1 - j)) - 1));
}

// Lanes of m from 16 consecutive elements at p, widened to float exactly (0 in the other lanes).
inline __attribute__((always_inline)) __m512 load_x16(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
inline __attribute__((always_inline)) __m512 load_x16(const BFloat16* p, __mmask16 m) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

// exp2_nonpositive of each lane, the same bits: n rounded to nearest even (vrndscaleps, as the
// scalar 1.5 * 2^23 addition does), 2^f from the same polynomial (exp2_fraction), 2^n applied by
// vscalefps (exact, as the scalar multiply by the power built in the bits), 0 below -126 (the
// flush, and -inf), NaN kept. 9 instructions against the 15 GCC builds from the scalar function
// (its clamp and select become masks and register copies): the statistics sweep's arithmetic
// 5.4 -> 3.5 ns per 16 elements in L1 (measured 2026-12-01, docs/architecture.md).
inline __attribute__((always_inline)) __m512 exp2_nonpositive_x16(__m512 x) {
  const __mmask16 kept = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);  // x >= -126, or NaN
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_maskz_scalef_ps(kept, exp2_fraction(x - n), n);
}

// acc + weighted(p, x) in each lane of `lanes`, one fused multiply-add: a lane whose p is 0 keeps
// acc whatever x holds (an infinite or NaN log-ratio), a NaN p gives NaN; the lanes outside
// `lanes` keep acc.
inline __attribute__((always_inline)) __m512 weighted_fmadd_x16(__m512 acc, __m512 p, __m512 x, __mmask16 lanes) {
  return _mm512_mask3_fmadd_ps(p, x, acc, _mm512_mask_cmp_ps_mask(lanes, p, _mm512_setzero_ps(), _CMP_NEQ_UQ));
}

// square_nonnegative(e) of each lane: e * e, 0 where that would fall below the smallest normal,
// NaN kept.
inline __attribute__((always_inline)) __m512 square_nonnegative_x16(__m512 e) {
  return _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(e, _mm512_set1_ps(0x1p-63f), _CMP_NLT_UQ), e, e);
}

}  // namespace fusedkd::cpu

#else

namespace fusedkd::cpu {
constexpr bool kVectorMath = false;
}  // namespace fusedkd::cpu

#endif

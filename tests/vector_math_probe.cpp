// The AVX-512 half of tests/test_vector_math.cpp, compiled with the kernels' avx512 flags: the
// scalar functions and their vector forms over the same values. No static initialisers here, so
// nothing in this file runs unless the test has found AVX-512.
#include <cmath>
#include <cstddef>

#include "cpu/vector_math.h"
#include "fusedkd/soft_target_math.h"

static_assert(fusedkd::cpu::kVectorMath, "built without the AVX-512 flags");

namespace fusedkd::testing {

// Which: 0 exp2_nonpositive(x), 1 weighted(x, y) (its vector form a multiply-add into -0, which
// adds nothing), 2 square_nonnegative(x), 3 the multiply-add into 1.5 in the even lanes alone
// against its rule (a lane outside the mask, or whose weight x is 0, keeps 1.5 whatever y holds;
// the others are fma(x, y, 1.5), a NaN x giving NaN); the vector form 16 at a time, a partial
// last vector padded with 0.
void apply_both(int which, const float* x, const float* y, std::size_t n, float* scalar, float* vector) {
  for (std::size_t i = 0; i < n; ++i) {
    const bool counted = i % 2 == 0 && !(x[i] == 0.0f);
    scalar[i] = which == 0   ? exp2_nonpositive(x[i])
                : which == 1 ? weighted(x[i], y[i])
                : which == 2 ? square_nonnegative(x[i])
                             : (counted ? std::fma(x[i], y[i], 1.5f) : 1.5f);
  }
  for (std::size_t i = 0; i < n; i += 16) {
    alignas(64) float a[16] = {}, b[16] = {}, r[16];
    for (std::size_t k = 0; k < 16 && i + k < n; ++k) {
      a[k] = x[i + k];
      b[k] = y[i + k];
    }
    const __m512 va = _mm512_load_ps(a), vb = _mm512_load_ps(b);
    _mm512_store_ps(r, which == 0   ? cpu::exp2_nonpositive_x16(va)
                       : which == 1 ? cpu::weighted_fmadd_x16(_mm512_set1_ps(-0.0f), va, vb, 0xFFFF)
                       : which == 2 ? cpu::square_nonnegative_x16(va)
                                    : cpu::weighted_fmadd_x16(_mm512_set1_ps(1.5f), va, vb, 0x5555));
    for (std::size_t k = 0; k < 16 && i + k < n; ++k) vector[i + k] = r[k];
  }
}

}  // namespace fusedkd::testing

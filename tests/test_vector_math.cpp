// The AVX-512 forms of the shared math (kernels/cpu/vector_math.h) against the scalar functions
// they stand in for, bit for bit, on a processor with AVX-512 (skipped elsewhere). Built with the
// flags of the kernels' avx512 copy, so that both forms contract the polynomial's multiply-adds
// alike, as they do in that copy.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/vector_math.h"
#include "fusedkd/soft_target_math.h"

namespace fusedkd::testing {
namespace {

std::uint32_t bits(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

// Applies f16 to xs 16 at a time (a partial last vector padded with 0) and returns the lanes.
template <typename F16>
std::vector<float> lanes(const std::vector<float>& xs, const std::vector<float>& ys, F16 f16) {
  std::vector<float> out(xs.size());
  for (std::size_t i = 0; i < xs.size(); i += 16) {
    alignas(64) float x[16] = {}, y[16] = {}, r[16];
    for (std::size_t k = 0; k < 16 && i + k < xs.size(); ++k) {
      x[k] = xs[i + k];
      y[k] = ys[i + k];
    }
    _mm512_store_ps(r, f16(_mm512_load_ps(x), _mm512_load_ps(y)));
    for (std::size_t k = 0; k < 16 && i + k < xs.size(); ++k) out[i + k] = r[k];
  }
  return out;
}

bool has_avx512() { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"); }

const float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

TEST(VectorMath, Exp2NonpositiveGivesTheScalarBits) {
  if (!has_avx512()) GTEST_SKIP() << "no AVX-512 on this processor";
  std::vector<float> xs;
  for (int i = 0; i <= 1600000; ++i) xs.push_back(-static_cast<float>(i) * 1e-4f);  // [-160, 0]
  for (float x : {-0.0f, -0.5f, -1.5f, -2.5f, -125.5f, -126.0f, -126.25f, -126.5f, -126.75f, -127.0f, -149.0f,
                  -150.0f, -1e30f, std::numeric_limits<float>::lowest(), -kInf, kNaN, -kNaN})
    xs.push_back(x);
  const std::vector<float> got =
      lanes(xs, xs, [](__m512 x, __m512) { return cpu::exp2_nonpositive_x16(x); });
  int mismatches = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const float want = exp2_nonpositive(xs[i]);
    const bool same = std::isnan(want) ? std::isnan(got[i]) : bits(got[i]) == bits(want);
    if (!same && ++mismatches <= 5) ADD_FAILURE() << "x " << xs[i] << ": " << got[i] << " against " << want;
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(VectorMath, WeightedAndSquareFollowTheScalarRules) {
  if (!has_avx512()) GTEST_SKIP() << "no AVX-512 on this processor";
  std::vector<float> ps, xs;
  const float values[] = {0.0f, -0.0f, 1.0f, 0.25f, 0x1p-63f, 0x1.fffffep-64f, 1e-30f, 0x1p-126f, 3.5f,
                          -kInf, kInf, kNaN, std::numeric_limits<float>::lowest()};
  for (float p : values)
    for (float x : values) {
      ps.push_back(p);
      xs.push_back(x);
    }
  const std::vector<float> w = lanes(ps, xs, [](__m512 p, __m512 x) { return cpu::weighted_x16(p, x); });
  const std::vector<float> sq = lanes(ps, xs, [](__m512 p, __m512) { return cpu::square_nonnegative_x16(p); });
  for (std::size_t i = 0; i < ps.size(); ++i) {
    const float want_w = weighted(ps[i], xs[i]), want_sq = square_nonnegative(ps[i]);
    if (std::isnan(want_w)) {
      EXPECT_TRUE(std::isnan(w[i])) << ps[i] << " * " << xs[i];
    } else {
      EXPECT_EQ(bits(w[i]), bits(want_w)) << ps[i] << " * " << xs[i];
    }
    if (std::isnan(want_sq)) {
      EXPECT_TRUE(std::isnan(sq[i])) << ps[i];
    } else {
      EXPECT_EQ(bits(sq[i]), bits(want_sq)) << ps[i];
    }
  }
}

}  // namespace
}  // namespace fusedkd::testing

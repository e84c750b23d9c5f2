// The math every kernel shares (include/fusedkd/math.h, soft_target_math.h) and the dtype
// conversions (include/fusedkd/dtype.h), on the host: the fast exp2 and log1p against the C
// library in float64, the order independence of the softmax statistics' merge, and float16 /
// bfloat16 round trips of every bit pattern.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "fusedkd/dtype.h"
#include "fusedkd/math.h"
#include "fusedkd/soft_target_math.h"

namespace fusedkd::testing {
namespace {

// Measured (2026-12-01): worst 7.9e-8 with multiply-adds fused (the avx2 / avx512 kernel copies),
// 9.9e-8 without (this test's flags, the baseline copy); mean 2.2-2.3e-8. The degree-5 polynomial
// once used fails both bounds (1.7-1.9e-7, mean 5.6e-8; include/fusedkd/math.h).
TEST(SharedMath, Exp2NonpositiveIsAccurateAndHandlesSpecialValues) {
  double worst = 0, total = 0;
  constexpr int kSteps = 1260000;
  for (int i = 0; i <= kSteps; ++i) {
    const float x = -static_cast<float>(i) * 1e-4f;  // [-126, 0]
    const double ref = std::exp2(static_cast<double>(x));
    const double error = std::abs(exp2_nonpositive(x) - ref) / ref;
    worst = std::max(worst, error);
    total += error;
  }
  EXPECT_LT(worst, 1.2e-7);
  EXPECT_LT(total / (kSteps + 1), 3e-8);
  EXPECT_EQ(exp2_nonpositive(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(exp2_nonpositive(-1000.0f), 0.0f);
  EXPECT_EQ(exp2_nonpositive(0.0f), 1.0f);
  EXPECT_TRUE(std::isnan(exp2_nonpositive(std::numeric_limits<float>::quiet_NaN())));
}

// The square the CPU's statistics sweep takes for exp(x) from exp(x / 2): exact where the square
// is a normal number, 0 below that (no subnormal), NaN kept.
TEST(SharedMath, SquareNonnegativeFlushesBelowTheSmallestNormal) {
  EXPECT_EQ(square_nonnegative(0.5f), 0.25f);
  EXPECT_EQ(square_nonnegative(1.0f), 1.0f);
  EXPECT_EQ(square_nonnegative(0x1p-63f), 0x1p-126f);
  EXPECT_EQ(square_nonnegative(0x1.fffffep-64f), 0.0f);
  EXPECT_EQ(square_nonnegative(0.0f), 0.0f);
  EXPECT_EQ(square_nonnegative(0x1p-511), 0x1p-1022);
  EXPECT_EQ(square_nonnegative(0x1.fffffffffffffp-512), 0.0);
  EXPECT_TRUE(std::isnan(square_nonnegative(std::numeric_limits<float>::quiet_NaN())));
}

TEST(SharedMath, Log1pOnTheUnitIntervalIsAccurate) {
  double worst = 0;
  for (int i = 1; i <= 100000; ++i) {
    const float x = static_cast<float>(i) * 1e-5f;  // (0, 1]
    const double ref = std::log1p(static_cast<double>(x));
    worst = std::max(worst, std::abs(log1p_unit_interval(x) - ref) / ref);
  }
  for (int e = -40; e < 0; ++e) {  // tiny arguments keep their relative accuracy
    const float x = std::ldexp(1.0f, e);
    worst = std::max(worst, std::abs(log1p_unit_interval(x) - std::log1p(static_cast<double>(x))) / x);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(log1p_unit_interval(0.0f), 0.0f);
  EXPECT_TRUE(std::isnan(log1p_unit_interval(std::numeric_limits<float>::quiet_NaN())));
}

TEST(SharedMath, StatsMergeIsOrderIndependent) {
  const SoftmaxStatsMerge<double> merge{kLog2e / 2.0};
  const SoftmaxStats<double> a{1.0, 2.0}, b{5.0, 1.5}, c{-3.0, 4.0};
  const SoftmaxStats<double> empty{neg_infinity<double>(), 0.0};
  const auto left = merge(merge(a, b), c);
  const auto right = merge(a, merge(c, b));
  EXPECT_DOUBLE_EQ(left.max, 5.0);
  EXPECT_NEAR(left.sum, right.sum, 1e-14);
  const double expected = 2.0 * std::exp((1.0 - 5.0) / 2) + 1.5 + 4.0 * std::exp((-3.0 - 5.0) / 2);
  EXPECT_NEAR(left.sum, expected, 1e-14);
  EXPECT_EQ(merge(empty, empty).sum, 0.0);
  EXPECT_DOUBLE_EQ(merge(empty, a).sum, a.sum);
}

TEST(Conversions, HalfRoundTripsEveryValue) {
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const Half h{static_cast<std::uint16_t>(bits)};
    const float f = half_to_float(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(half_to_float(float_to_half(f))));
      continue;
    }
    ASSERT_EQ(float_to_half(f).bits, h.bits) << "bits " << bits;
  }
  EXPECT_EQ(half_to_float(float_to_half(1e6f)), std::numeric_limits<float>::infinity());
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 1.0f / 4096)), 1.0f);  // ties to even
  EXPECT_EQ(half_to_float(Half{0x0001}), std::ldexp(1.0f, -24));     // smallest subnormal
}

TEST(Conversions, BFloat16RoundTripsEveryValueAndRoundsToNearestEven) {
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const BFloat16 b{static_cast<std::uint16_t>(bits)};
    const float f = bfloat16_to_float(b);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bfloat16_to_float(float_to_bfloat16(f))));
      continue;
    }
    ASSERT_EQ(float_to_bfloat16(f).bits, b.bits) << "bits " << bits;
  }
  EXPECT_EQ(bfloat16_to_float(float_to_bfloat16(1.0f + 1.0f / 256)), 1.0f);  // tie -> even
  EXPECT_EQ(bfloat16_to_float(float_to_bfloat16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
}

}  // namespace
}  // namespace fusedkd::testing

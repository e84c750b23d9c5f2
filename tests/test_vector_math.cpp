// The AVX-512 forms of the shared math (kernels/cpu/vector_math.h) against the scalar functions
// they stand in for, bit for bit (the weighted multiply-add: the same values, and bit for bit
// against its rule), on a processor with AVX-512 (skipped elsewhere). Only
// tests/vector_math_probe.cpp is compiled for AVX-512 (with the kernels' avx512 flags, so that
// the scalar and the vector forms both contract the polynomial's multiply-adds, as in that copy):
// this file, and the test binary's start-up, run on any x86-64 processor.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>


namespace fusedkd::testing {
// tests/vector_math_probe.cpp, compiled for AVX-512.
void apply_both(int which, const float* x, const float* y, std::size_t n, float* scalar, float* vector);
}  // namespace fusedkd::testing

namespace fusedkd::testing {
namespace {

std::uint32_t bits(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

// The lanes of the vector form where they differ from the scalar function (NaN matching NaN): in
// their bits, or with `values`, as values (the sign of a zero added to a sum aside).
std::vector<std::size_t> mismatches(int which, const std::vector<float>& x, const std::vector<float>& y,
                                    std::vector<float>& scalar, std::vector<float>& vector, bool values = false) {
  scalar.assign(x.size(), 0.0f);
  vector.assign(x.size(), 0.0f);
  apply_both(which, x.data(), y.data(), x.size(), scalar.data(), vector.data());
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const bool same = std::isnan(scalar[i]) ? std::isnan(vector[i])
                      : values               ? scalar[i] == vector[i]
                                             : bits(scalar[i]) == bits(vector[i]);
    if (!same) out.push_back(i);
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
  std::vector<float> scalar, vector;
  const std::vector<std::size_t> bad = mismatches(0, xs, xs, scalar, vector);
  for (std::size_t k = 0; k < bad.size() && k < 5; ++k)
    ADD_FAILURE() << "x " << xs[bad[k]] << ": " << vector[bad[k]] << " against " << scalar[bad[k]];
  EXPECT_EQ(bad.size(), 0u);
}

TEST(VectorMath, WeightedAndSquareFollowTheScalarRules) {
  if (!has_avx512()) GTEST_SKIP() << "no AVX-512 on this processor";
  std::vector<float> ps, xs;
  const float values[] = {0.0f, -0.0f, 1.0f, 0.25f, 0x1p-63f, 0x1.fffffep-64f, 1e-30f, 0x1p-126f, 3.5f,
                          -kInf, kInf, kNaN, std::numeric_limits<float>::lowest()};
  for (float p : values)
    for (float x : values)
      for (int twice = 0; twice < 2; ++twice) {  // each pair in an even lane and an odd one (which 3)
        ps.push_back(p);
        xs.push_back(x);
      }
  std::vector<float> scalar, vector;
  for (int which : {1, 2, 3}) {
    const std::vector<std::size_t> bad = mismatches(which, ps, xs, scalar, vector, which == 1);
    const char* name = which == 1 ? "weighted(" : which == 2 ? "square_nonnegative(" : "1.5 + weighted(";
    for (std::size_t k = 0; k < bad.size() && k < 5; ++k)
      ADD_FAILURE() << name << ps[bad[k]] << ", " << xs[bad[k]] << ") at " << bad[k] << ": " << vector[bad[k]]
                    << " against " << scalar[bad[k]];
    EXPECT_EQ(bad.size(), 0u);
  }
}

}  // namespace
}  // namespace fusedkd::testing

// The gradient scaling launchers (fusedkd/scale.h) alone, CPU and CUDA, against a float64
// reference: one factor for all, one per element, one per row (through scale_elements' factor
// groups and through scale_rows directly), for every dtype, with rows starting at every alignment.
#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "fusedkd/scale.h"
#include "kernel_test_support.h"

namespace fusedkd::testing {
namespace {

class ScaleKernel : public BackendTest {};

constexpr DType kDtypes[] = {DType::Float32, DType::Float64, DType::Float16, DType::BFloat16};

DType factor_dtype(DType dtype) { return dtype == DType::Float64 ? DType::Float64 : DType::Float32; }
TEST_P(ScaleKernel, ScaleElementsEveryMode) {
  const Backend backend = GetParam();
  const std::int64_t numel = 6 * 1031;
  for (const std::int64_t group : {numel, std::int64_t{1}, std::int64_t{1031}}) {
    for (const DType dtype : kDtypes) {
      const std::vector<double> values = random_values(numel, 9);
      const std::vector<double> factor_values = random_values(numel / group, 10);
      Buffer data = Buffer::from(dtype, values);
      const bool is_double = dtype == DType::Float64;
      const Buffer factors = Buffer::from(factor_dtype(dtype), factor_values);
      run_on_backend(backend, {&factors}, {&data}, 0, [&](const auto& in, const auto& out, void*, void* stream) {
        ScaleElementsArgs a;
        a.data = out[0];
        a.dtype = dtype;
        a.numel = numel;
        a.factors = in[0];
        a.factors_are_double = is_double;
        a.factor_group = group;
        FUSEDKD_ON_BACKEND(backend, stream, scale_elements_cpu(a),
                           scale_elements_cuda(a, FUSEDKD_TEST_STREAM(stream)));
      });
      std::vector<double> ref(numel);
      const Buffer rounded = Buffer::from(dtype, values);
      for (std::int64_t i = 0; i < numel; ++i) ref[i] = rounded.get(i) * factors.get(i / group);
      EXPECT_LT(rel_diff(data.values(), ref), tolerance(dtype)) << dtype_name(dtype) << " group " << group;
    }
  }
}

// scale_rows directly: per row (some factors exactly 1, which leave their rows as they are) and one
// factor for every row; 7 rows of 1031 elements, so the rows start at every alignment.
TEST_P(ScaleKernel, ScaleRowsPerRowAndSingle) {
  const Backend backend = GetParam();
  const std::int64_t rows = 7, cols = 1031;
  for (const bool per_row : {true, false}) {
    for (const DType dtype : kDtypes) {
      const std::vector<double> values = random_values(rows * cols, 11);
      std::vector<double> factor_values = random_values(per_row ? rows : 1, 12);
      if (per_row) factor_values[2] = factor_values[5] = 1.0;
      Buffer grad = Buffer::from(dtype, values);
      const Buffer factors = Buffer::from(factor_dtype(dtype), factor_values);
      run_on_backend(backend, {&factors}, {&grad}, 0, [&](const auto& in, const auto& out, void*, void* stream) {
        ScaleRowsArgs a;
        a.grad = out[0];
        a.grad_dtype = dtype;
        a.rows = rows;
        a.cols = cols;
        a.grad_output = in[0];
        a.grad_output_is_double = dtype == DType::Float64;
        a.per_row = per_row;
        FUSEDKD_ON_BACKEND(backend, stream, scale_rows_cpu(a), scale_rows_cuda(a, FUSEDKD_TEST_STREAM(stream)));
      });
      const Buffer rounded = Buffer::from(dtype, values);
      std::vector<double> ref(rows * cols);
      for (std::int64_t i = 0; i < rows * cols; ++i) ref[i] = rounded.get(i) * factors.get(per_row ? i / cols : 0);
      EXPECT_LT(rel_diff(grad.values(), ref), tolerance(dtype))
          << dtype_name(dtype) << (per_row ? " per row" : " single");
    }
  }
}

// Nothing to scale is no work (and needs no pointers); a missing pointer with work to do, a
// factor group that does not divide the array, and factors of another dtype than the gradient's
// loss dtype are errors.
TEST_P(ScaleKernel, EmptyAndBadArguments) {
  const Backend backend = GetParam();
  const auto scale_elements = [&](const ScaleElementsArgs& a) {
    FUSEDKD_ON_BACKEND(backend, nullptr, scale_elements_cpu(a), scale_elements_cuda(a, nullptr));
  };
  ScaleElementsArgs empty;
  EXPECT_NO_THROW(scale_elements(empty));
  ScaleRowsArgs no_rows;
  no_rows.cols = 5;
  EXPECT_NO_THROW(FUSEDKD_ON_BACKEND(backend, nullptr, scale_rows_cpu(no_rows), scale_rows_cuda(no_rows, nullptr)));

  ScaleElementsArgs null_data;
  null_data.numel = 4;
  EXPECT_THROW(scale_elements(null_data), std::invalid_argument);
  float host[6] = {1, 2, 3, 4, 5, 6};
  const float factor[3] = {2, 2, 2};
  ScaleElementsArgs bad_group;
  bad_group.data = host;
  bad_group.numel = 6;
  bad_group.factors = factor;
  bad_group.factor_group = 4;
  EXPECT_THROW(scale_elements(bad_group), std::invalid_argument);
  bad_group.factor_group = 0;
  EXPECT_THROW(scale_elements(bad_group), std::invalid_argument);
  if (backend == Backend::Cuda) {
    // float32 data needs float32 factors: the CUDA launcher checks before it reads anything.
    ScaleRowsArgs wrong_factors;
    wrong_factors.grad = host;
    wrong_factors.rows = 2;
    wrong_factors.cols = 3;
    wrong_factors.grad_output = factor;
    wrong_factors.grad_output_is_double = true;
    EXPECT_THROW(FUSEDKD_ON_BACKEND(backend, nullptr, (void)0, scale_rows_cuda(wrong_factors, nullptr)),
                 std::invalid_argument);
  }
}

INSTANTIATE_TEST_SUITE_P(All, ScaleKernel, ::testing::Values(Backend::Cpu, Backend::Cuda), backend_test_name);

}  // namespace
}  // namespace fusedkd::testing

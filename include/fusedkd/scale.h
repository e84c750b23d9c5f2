// Gradient scaling: the backward of every loss op multiplies the gradients its forward wrote (as if
// grad_output were 1) by grad_output, in place. Factors are float32, or float64 when the gradient
// is float64 (the loss dtype). A single factor, or a row's factor, of exactly 1 leaves its elements
// untouched (no load, no store: the common loss.backward()); per-element factors are all applied.
#pragma once

#include <cstdint>

#include "fusedkd/cpu_executor.h"
#include "fusedkd/dtype.h"

struct CUstream_st;

namespace fusedkd {

// data[i] *= factors[i / factor_group] in place (the factors in float32, or float64 when
// factors_are_double). factor_group = numel: one factor for all; 1: one factor per element, in the
// same memory order; anything between: one factor per run of factor_group consecutive elements
// (per row of an [R, V] gradient, per sample of an [N, ...] one).
struct ScaleElementsArgs {
  void* data = nullptr;
  DType dtype = DType::Float32;
  std::int64_t numel = 0;
  const void* factors = nullptr;
  bool factors_are_double = false;
  std::int64_t factor_group = 1;
};
void scale_elements_cpu(const ScaleElementsArgs& args, const CpuExecutor& executor = {});
void scale_elements_cuda(const ScaleElementsArgs& args, CUstream_st* stream);

// grad[r, :] *= grad_output[r] (per_row) or grad_output[0], in place ([rows, cols], contiguous).
// scale_elements_* hands its per-run case to these.
struct ScaleRowsArgs {
  void* grad = nullptr;
  DType grad_dtype = DType::Float32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  const void* grad_output = nullptr;
  bool grad_output_is_double = false;
  bool per_row = false;
};
void scale_rows_cpu(const ScaleRowsArgs& args, const CpuExecutor& executor = {});
void scale_rows_cuda(const ScaleRowsArgs& args, CUstream_st* stream);

}  // namespace fusedkd

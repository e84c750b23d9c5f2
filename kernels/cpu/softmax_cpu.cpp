// CPU temperature softmax / log-softmax, forward and backward.
//
// This file is compiled once per instruction set (kernels/CMakeLists.txt): FUSEDKD_CPU_ISA names
// the namespace of each copy and kernels/cpu/dispatch.cpp picks one at run time. Rows are split
// across threads; each row is converted once into a float scratch row that stays in L1/L2 while
// the max, the sum and the output sweeps run over it; the sweeps are `omp simd` loops built from
// the shared math in include/fusedkd/math.h.
#include <cmath>

#include "cpu_kernels.h"
#include "row_buffers.h"
#include "fusedkd/dtype.h"
#include "fusedkd/math.h"
#include "../validate.h"

namespace fusedkd::cpu::FUSEDKD_CPU_ISA {
namespace {

template <typename T>
void forward_rows(const SoftmaxForwardArgs& a, std::int64_t begin, std::int64_t end) {
  using Acc = acc_t<T>;
  const std::int64_t cols = a.cols;
  const Acc inv_temperature = static_cast<Acc>(1.0 / a.temperature);
  const Acc scale_log2 = static_cast<Acc>(kLog2e / a.temperature);
  Acc* __restrict x = scratch_row<Acc>(cols, 0);
  for (std::int64_t r = begin; r < end; ++r) {
    const T* in = static_cast<const T*>(a.input) + r * a.input_row_stride;
    T* out = static_cast<T*>(a.output) + r * cols;
    load_row(in, cols, x);
    const Acc m = row_max(x, cols);
    Acc sum = 0;
    if (a.kind == SoftmaxKind::Softmax) {
#pragma omp simd reduction(+ : sum)
      for (std::int64_t j = 0; j < cols; ++j) {
        x[j] = softmax_numerator(x[j], m, scale_log2);
        sum += x[j];
      }
      const Acc inv_sum = Acc(1) / sum;
#pragma omp simd
      for (std::int64_t j = 0; j < cols; ++j) x[j] *= inv_sum;
    } else {
#pragma omp simd reduction(+ : sum)
      for (std::int64_t j = 0; j < cols; ++j) sum += softmax_sum_term(x[j], m, scale_log2);
      const Acc log_sum = std::log(sum);
#pragma omp simd
      for (std::int64_t j = 0; j < cols; ++j)
        x[j] = log_softmax_value(x[j], m, inv_temperature, log_sum);
    }
    store_row(x, cols, out);
  }
}

template <typename T>
void backward_rows(const SoftmaxBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  using Acc = acc_t<T>;
  const std::int64_t cols = a.cols;
  const Acc inv_temperature = static_cast<Acc>(1.0 / a.temperature);
  Acc* __restrict dy = scratch_row<Acc>(cols, 0);
  Acc* __restrict y = scratch_row<Acc>(cols, 1);
  for (std::int64_t r = begin; r < end; ++r) {
    load_row(static_cast<const T*>(a.grad_output) + r * a.grad_output_row_stride, cols, dy);
    load_row(static_cast<const T*>(a.output) + r * a.output_row_stride, cols, y);
    if (a.kind == SoftmaxKind::Softmax) {
      double dot = 0;  // products of two floats are exact in double
#pragma omp simd reduction(+ : dot)
      for (std::int64_t j = 0; j < cols; ++j) dot += static_cast<double>(dy[j]) * static_cast<double>(y[j]);
      const SplitSum<Acc> s = split_sum<Acc>(dot);
#pragma omp simd
      for (std::int64_t j = 0; j < cols; ++j)
        dy[j] = softmax_backward_value(dy[j], y[j], s.hi, s.lo, inv_temperature);
    } else {
      Acc sum_dy = 0;
#pragma omp simd reduction(+ : sum_dy)
      for (std::int64_t j = 0; j < cols; ++j) sum_dy += dy[j];
#pragma omp simd
      for (std::int64_t j = 0; j < cols; ++j)
        dy[j] = log_softmax_backward_value(dy[j], y[j], sum_dy, inv_temperature);
    }
    store_row(dy, cols, static_cast<T*>(a.grad_input) + r * cols);
  }
}

}  // namespace

void softmax_forward(const SoftmaxForwardArgs& args, const CpuExecutor& executor) {
  with_storage_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    executor.run(args.rows, detail::rows_per_task(args.cols),
                 [&](std::int64_t begin, std::int64_t end) { forward_rows<T>(args, begin, end); });
  });
}

void softmax_backward(const SoftmaxBackwardArgs& args, const CpuExecutor& executor) {
  with_storage_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    executor.run(args.rows, detail::rows_per_task(args.cols),
                 [&](std::int64_t begin, std::int64_t end) { backward_rows<T>(args, begin, end); });
  });
}

}  // namespace fusedkd::cpu::FUSEDKD_CPU_ISA

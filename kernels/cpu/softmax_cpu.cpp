// CPU temperature softmax / log-softmax, forward and backward.
//
// This file is compiled once per instruction set (kernels/CMakeLists.txt): FUSEDKD_CPU_ISA names
// the namespace of each copy and kernels/cpu/dispatch.cpp picks one at run time. Rows are split
// across threads; the max, the sum and the output sweeps run over each row while it stays in
// L1/L2 (forward_rows); the sweeps are `omp simd` loops built from
// the shared math in include/fusedkd/math.h. Rows of up to 31 elements go 16 at a time,
// transposed, so that the same sweeps vectorise across rows (*_short_rows, row_buffers.h).
#include <cmath>
#include <type_traits>

#include "cpu_kernels.h"
#include "row_buffers.h"
#include "fusedkd/dtype.h"
#include "fusedkd/math.h"

namespace fusedkd::cpu::FUSEDKD_CPU_ISA {
namespace {

// Whether the sweeps read T in place here: not float16 in any copy, since GCC 12 leaves the
// numerator loop scalar when it widens float16 as it reads (softmax_t float16 forward at
// 512 x 32,000: 17.7 ms in place against 3.7-4.2 ms converted once, measured 2026-11-30).
template <typename T>
constexpr bool kSoftmaxReadsInPlace = kReadInPlace<T> && !std::is_same_v<T, Half>;

// Every row is read where it lies, a bfloat16 one widened as the sweeps read it (float16 is
// converted once into a scratch row instead: kSoftmaxReadsInPlace), and every
// output is written once, narrowed as it is stored; the softmax's numerators are the one thing
// kept between sweeps, in the output row itself (float, double) or in a scratch row. The sweeps
// read and write through one index, so `input` and `output` may be the same row.
// (Narrower rows used to be converted into a scratch row first and back after. Measured
// 2026-11-30 in alternating runs, bfloat16 fwd+bwd: softmax_t at 512 x 32,000 7.6-7.9 -> 4.4-4.6 ms,
// log_softmax_t 7.9-8.0 -> 4.8-4.9 ms; at 8192 x 1000 softmax_t 2.8-3.0 -> 2.4-2.5 ms,
// log_softmax_t unchanged at 2.7 ms; float32 unchanged.)
template <typename T>
void forward_rows(const SoftmaxForwardArgs& a, std::int64_t begin, std::int64_t end) {
  using Acc = acc_t<T>;
  constexpr bool kNarrow = !std::is_same_v<T, Acc>;
  const std::int64_t cols = a.cols;
  const Temperature<Acc> temp = Temperature<Acc>::of(a.temperature);
  Acc* scratch = kNarrow && a.kind == SoftmaxKind::Softmax ? scratch_row<Acc>(cols, 0) : nullptr;
  Acc* converted = kSoftmaxReadsInPlace<T> ? nullptr : scratch_row<Acc>(cols, 1);
  for (std::int64_t r = begin; r < end; ++r) {
    T* out = static_cast<T*>(a.output) + r * cols;
    // The row's sweeps, reading `in` (the row itself, or its converted copy).
    const auto sweeps = [&](const auto* in) {
      const Acc m = row_max<Acc>(in, cols);
      // The sum in blocks of kSumBlock, the total in double (row_buffers.h).
      double sum = 0;
      if (a.kind == SoftmaxKind::Softmax) {
        Acc* numerators = output_row(out, scratch);
        for (std::int64_t j0 = 0; j0 < cols; j0 += kSumBlock) {
          const std::int64_t j1 = j0 + kSumBlock < cols ? j0 + kSumBlock : cols;
          Acc block = 0;
#pragma omp simd reduction(+ : block)
          for (std::int64_t j = j0; j < j1; ++j) {
            numerators[j] = softmax_numerator(at<Acc>(in, j), m, temp.scale_log2);
            block += numerators[j];
          }
          sum += block;
        }
        const Acc inv_sum = static_cast<Acc>(1.0 / sum);
#pragma omp simd
        for (std::int64_t j = 0; j < cols; ++j) out[j] = StoreFromAcc<T>::apply(numerators[j] * inv_sum);
      } else {
        for (std::int64_t j0 = 0; j0 < cols; j0 += kSumBlock) {
          const std::int64_t j1 = j0 + kSumBlock < cols ? j0 + kSumBlock : cols;
          Acc block = 0;
#pragma omp simd reduction(+ : block)
          for (std::int64_t j = j0; j < j1; ++j) block += softmax_sum_term(at<Acc>(in, j), m, temp.scale_log2);
          sum += block;
        }
        const Acc log_sum = static_cast<Acc>(std::log(sum));
#pragma omp simd
        for (std::int64_t j = 0; j < cols; ++j)
          out[j] = StoreFromAcc<T>::apply(log_softmax_value(at<Acc>(in, j), m, temp.inv_t, log_sum));
      }
    };
    const T* in = static_cast<const T*>(a.input) + r * a.input_row_stride;
    if constexpr (kSoftmaxReadsInPlace<T>) {
      sweeps(in);
    } else {
      load_row(in, cols, converted);
      sweeps(static_cast<const Acc*>(converted));
    }
  }
}

// As forward_rows: rows read where they lie (or converted once), the gradient written once.
template <typename T>
void backward_rows(const SoftmaxBackwardArgs& a, std::int64_t begin, std::int64_t end) {
  using Acc = acc_t<T>;
  const std::int64_t cols = a.cols;
  const Acc inv_t = Temperature<Acc>::of(a.temperature).inv_t;
  Acc* converted_dy = kSoftmaxReadsInPlace<T> ? nullptr : scratch_row<Acc>(cols, 0);
  Acc* converted_y = kSoftmaxReadsInPlace<T> ? nullptr : scratch_row<Acc>(cols, 1);
  for (std::int64_t r = begin; r < end; ++r) {
    T* dx = static_cast<T*>(a.grad_input) + r * cols;
    const auto sweeps = [&](const auto* dy, const auto* y) {
      if (a.kind == SoftmaxKind::Softmax) {
        double dot = 0;  // products of two floats are exact in double
#pragma omp simd reduction(+ : dot)
        for (std::int64_t j = 0; j < cols; ++j)
          dot += static_cast<double>(at<Acc>(dy, j)) * static_cast<double>(at<Acc>(y, j));
        const SplitSum<Acc> s = split_sum<Acc>(dot);
#pragma omp simd
        for (std::int64_t j = 0; j < cols; ++j)
          dx[j] = StoreFromAcc<T>::apply(softmax_backward_value(at<Acc>(dy, j), at<Acc>(y, j), s.hi, s.lo, inv_t));
      } else {
        Acc sum_dy = 0;
#pragma omp simd reduction(+ : sum_dy)
        for (std::int64_t j = 0; j < cols; ++j) sum_dy += at<Acc>(dy, j);
#pragma omp simd
        for (std::int64_t j = 0; j < cols; ++j)
          dx[j] = StoreFromAcc<T>::apply(log_softmax_backward_value(at<Acc>(dy, j), at<Acc>(y, j), sum_dy, inv_t));
      }
    };
    const T* dy = static_cast<const T*>(a.grad_output) + r * a.grad_output_row_stride;
    const T* y = static_cast<const T*>(a.output) + r * a.output_row_stride;
    if constexpr (kSoftmaxReadsInPlace<T>) {
      sweeps(dy, y);
    } else {
      load_row(dy, cols, converted_dy);
      load_row(y, cols, converted_y);
      sweeps(static_cast<const Acc*>(converted_dy), static_cast<const Acc*>(converted_y));
    }
  }
}

// forward_rows for the `rows` (at most kShortRowLanes) rows from r0, across the vector lanes.
template <typename T>
void forward_short_rows(const SoftmaxForwardArgs& a, std::int64_t r0, int rows, acc_t<T>* __restrict x) {
  using Acc = acc_t<T>;
  constexpr int L = kShortRowLanes;
  const int lanes = opaque_lane_count();
  const std::int64_t cols = a.cols;
  const Temperature<Acc> temp = Temperature<Acc>::of(a.temperature);
  load_rows_transposed(static_cast<const T*>(a.input) + r0 * a.input_row_stride, a.input_row_stride, rows, cols, x);
  alignas(64) Acc m[L], sum[L], row_constant[L];
#pragma omp simd
  for (int l = 0; l < L; ++l) {
    m[l] = neg_infinity<Acc>();
    sum[l] = Acc(0);
  }
  for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
    for (int l = 0; l < L; ++l) m[l] = x[j * L + l] > m[l] ? x[j * L + l] : m[l];  // as row_max
  if (a.kind == SoftmaxKind::Softmax) {
    for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
      for (int l = 0; l < lanes; ++l) {
        x[j * L + l] = softmax_numerator(x[j * L + l], m[l], temp.scale_log2);
        sum[l] += x[j * L + l];
      }
#pragma omp simd
    for (int l = 0; l < L; ++l) row_constant[l] = Acc(1) / sum[l];
    for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
      for (int l = 0; l < L; ++l) x[j * L + l] *= row_constant[l];
  } else {
    for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
      for (int l = 0; l < lanes; ++l) sum[l] += softmax_sum_term(x[j * L + l], m[l], temp.scale_log2);
    for (int l = 0; l < L; ++l) row_constant[l] = std::log(sum[l]);
    for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
      for (int l = 0; l < lanes; ++l)
        x[j * L + l] = log_softmax_value(x[j * L + l], m[l], temp.inv_t, row_constant[l]);
  }
  store_rows_transposed(x, rows, cols, static_cast<T*>(a.output) + r0 * cols);
}

// backward_rows for the `rows` (at most kShortRowLanes) rows from r0, across the vector lanes.
template <typename T>
void backward_short_rows(const SoftmaxBackwardArgs& a, std::int64_t r0, int rows, acc_t<T>* __restrict dy,
                         acc_t<T>* __restrict y) {
  using Acc = acc_t<T>;
  constexpr int L = kShortRowLanes;
  const int lanes = opaque_lane_count();
  const std::int64_t cols = a.cols;
  const Acc inv_t = Temperature<Acc>::of(a.temperature).inv_t;
  load_rows_transposed(static_cast<const T*>(a.grad_output) + r0 * a.grad_output_row_stride,
                       a.grad_output_row_stride, rows, cols, dy);
  load_rows_transposed(static_cast<const T*>(a.output) + r0 * a.output_row_stride, a.output_row_stride, rows, cols, y);
  if (a.kind == SoftmaxKind::Softmax) {
    alignas(64) double dot[L];
    alignas(64) Acc hi[L], lo[L];
#pragma omp simd
    for (int l = 0; l < L; ++l) dot[l] = 0;
    for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
      for (int l = 0; l < lanes; ++l)  // products of two floats are exact in double
        dot[l] += static_cast<double>(dy[j * L + l]) * static_cast<double>(y[j * L + l]);
    for (int l = 0; l < L; ++l) {
      const SplitSum<Acc> split = split_sum<Acc>(dot[l]);
      hi[l] = split.hi;
      lo[l] = split.lo;
    }
    for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
      for (int l = 0; l < lanes; ++l)
        dy[j * L + l] = softmax_backward_value(dy[j * L + l], y[j * L + l], hi[l], lo[l], inv_t);
  } else {
    alignas(64) Acc sum_dy[L];
#pragma omp simd
    for (int l = 0; l < L; ++l) sum_dy[l] = Acc(0);
    for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
      for (int l = 0; l < L; ++l) sum_dy[l] += dy[j * L + l];
    for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
      for (int l = 0; l < lanes; ++l)
        dy[j * L + l] = log_softmax_backward_value(dy[j * L + l], y[j * L + l], sum_dy[l], inv_t);
  }
  store_rows_transposed(dy, rows, cols, static_cast<T*>(a.grad_input) + r0 * cols);
}

// Short rows: calls short_rows(r, n, group0, group1) on each group of up to kShortRowLanes rows
// of [begin, end), with two transposed scratch groups of this thread; else rows(begin, end).
template <typename Acc, typename Short, typename Rows>
void by_row_length(std::int64_t cols, std::int64_t begin, std::int64_t end, Short&& short_rows, Rows&& rows) {
  if (cols > kShortRowMax) return rows(begin, end);
  const std::int64_t group = cols * kShortRowLanes;
  Acc* buffer = scratch_row<Acc>(2 * group, 0);
  for (std::int64_t r = begin; r < end; r += kShortRowLanes)
    short_rows(r, static_cast<int>(end - r < kShortRowLanes ? end - r : kShortRowLanes), buffer, buffer + group);
}

}  // namespace

void softmax_forward(const SoftmaxForwardArgs& args, const CpuExecutor& executor) {
  with_storage_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    executor.run(args.rows, rows_per_task(args.cols), [&](std::int64_t begin, std::int64_t end) {
      by_row_length<Acc>(
          args.cols, begin, end,
          [&](std::int64_t r, int n, Acc* x, Acc*) { forward_short_rows<T>(args, r, n, x); },
          [&](std::int64_t b, std::int64_t e) { forward_rows<T>(args, b, e); });
    });
  });
}

void softmax_backward(const SoftmaxBackwardArgs& args, const CpuExecutor& executor) {
  with_storage_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    executor.run(args.rows, rows_per_task(args.cols), [&](std::int64_t begin, std::int64_t end) {
      by_row_length<Acc>(
          args.cols, begin, end,
          [&](std::int64_t r, int n, Acc* dy, Acc* y) { backward_short_rows<T>(args, r, n, dy, y); },
          [&](std::int64_t b, std::int64_t e) { backward_rows<T>(args, b, e); });
    });
  });
}

}  // namespace fusedkd::cpu::FUSEDKD_CPU_ISA

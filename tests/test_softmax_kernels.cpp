// The kernel library alone (no LibTorch): softmax / log-softmax launchers against the float64
// reference, CPU and CUDA, every dtype, short to long rows, strided and misaligned rows, masked
// entries, temperatures from 0.05 to 100; outputs are poisoned with NaN before each launch.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "fusedkd/build_config.h"
#include "fusedkd/softmax.h"
#include "kernel_test_support.h"
#include "reference.h"

namespace fusedkd::testing {
namespace {

struct Case {
  Backend backend;
  DType dtype;
  SoftmaxKind kind;
  std::int64_t rows;
  std::int64_t cols;
  std::int64_t pad;     // extra elements between input rows (row stride = cols + pad)
  std::int64_t offset;  // elements between the allocation start and row 0 (misaligns rows)
  double masked;        // fraction of -inf entries
  double temperature;
};

const char* kind_name(SoftmaxKind kind) { return kind == SoftmaxKind::Softmax ? "softmax" : "logsoftmax"; }

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::ostringstream s;
  s << backend_name(c.backend) << "_" << dtype_name(c.dtype) << "_" << kind_name(c.kind) << "_R" << c.rows
    << "_V" << c.cols << "_pad" << c.pad << "_off" << c.offset << (c.masked > 0 ? "_masked" : "") << "_T";
  std::ostringstream t;
  t << c.temperature;  // 0.05 -> "0.05", 100 -> "100"; test names take no '.'
  std::string temperature = t.str();
  for (char& ch : temperature) ch = ch == '.' ? 'p' : ch;
  s << temperature;
  return s.str();
}

// How GoogleTest prints a case (--gtest_list_tests, failure messages): every field, by name.
void PrintTo(const Case& c, std::ostream* os) {
  *os << "{" << backend_name(c.backend) << ", " << dtype_name(c.dtype) << ", " << kind_name(c.kind)
      << ", rows " << c.rows << ", cols " << c.cols << ", pad " << c.pad << ", offset " << c.offset
      << ", masked " << c.masked << ", T " << c.temperature << "}";
}

// Copies `rows` strided rows out of a flat buffer of values.
std::vector<double> compact_rows(const std::vector<double>& flat, const Case& c) {
  std::vector<double> out(static_cast<std::size_t>(c.rows * c.cols));
  for (std::int64_t r = 0; r < c.rows; ++r)
    for (std::int64_t j = 0; j < c.cols; ++j)
      out[r * c.cols + j] = flat[c.offset + r * (c.cols + c.pad) + j];
  return out;
}

class SoftmaxKernel : public ::testing::TestWithParam<Case> {};

TEST_P(SoftmaxKernel, ForwardMatchesFloat64Reference) {
  const Case c = GetParam();
  if (const char* why = missing_device(c.backend)) GTEST_SKIP() << why;
  const std::int64_t stride = c.cols + c.pad;
  const std::uint64_t seed = static_cast<std::uint64_t>(c.rows * 7919 + c.cols * 31 + c.pad);
  // Logits are rounded to the dtype first: the reference sees exactly what the kernel reads.
  const std::vector<double> raw = random_logits(1, c.offset + c.rows * stride, seed, 3.0, c.masked);
  const Buffer input = Buffer::from(c.dtype, raw);
  const std::vector<double> ref =
      softmax_reference(compact_rows(input.values(), c), c.rows, c.cols, c.temperature,
                        c.kind == SoftmaxKind::LogSoftmax);
  Buffer output(c.dtype, static_cast<std::size_t>(c.rows * c.cols));
  output.poison();

  SoftmaxForwardArgs args;
  args.dtype = c.dtype;
  args.rows = c.rows;
  args.cols = c.cols;
  args.input_row_stride = stride;
  args.temperature = c.temperature;
  args.kind = c.kind;
  const std::size_t offset_bytes = static_cast<std::size_t>(c.offset) * dtype_size(c.dtype);
  run_on_backend(c.backend, {&input}, {&output}, 0,
                 [&](const std::vector<const void*>& in, const std::vector<void*>& out, void*, void* stream) {
                   args.input = static_cast<const unsigned char*>(in[0]) + offset_bytes;
                   args.output = out[0];
                   FUSEDKD_ON_BACKEND(c.backend, stream, softmax_forward_cpu(args),
                                      softmax_forward_cuda(args, FUSEDKD_TEST_STREAM(stream)));
                 });
  const double error = relative_error(output.values(), ref, resolution_floor(c.dtype));
  EXPECT_LT(error, tolerance(c.dtype)) << case_name({c, 0});
}

TEST_P(SoftmaxKernel, BackwardMatchesFloat64Reference) {
  const Case c = GetParam();
  if (const char* why = missing_device(c.backend)) GTEST_SKIP() << why;
  const bool log = c.kind == SoftmaxKind::LogSoftmax;
  const std::int64_t stride = c.cols + c.pad;
  const std::uint64_t seed = static_cast<std::uint64_t>(c.rows * 104729 + c.cols * 17 + c.pad);
  // The forward output (as the dtype stores it) and an upstream gradient, both with row stride.
  const std::vector<double> logits = random_logits(c.rows, c.cols, seed, 3.0, c.masked);
  const std::vector<double> forward = softmax_reference(logits, c.rows, c.cols, c.temperature, log);
  const std::vector<double> upstream = random_logits(1, c.offset + c.rows * stride, seed + 1, 1.0);
  std::vector<double> out_flat(static_cast<std::size_t>(c.offset + c.rows * stride), 0.0);
  for (std::int64_t r = 0; r < c.rows; ++r)
    for (std::int64_t j = 0; j < c.cols; ++j)
      out_flat[c.offset + r * stride + j] = forward[r * c.cols + j];
  const Buffer grad_output = Buffer::from(c.dtype, upstream);
  const Buffer output = Buffer::from(c.dtype, out_flat);
  const std::vector<double> ref =
      softmax_backward_reference(compact_rows(grad_output.values(), c), compact_rows(output.values(), c),
                                 c.rows, c.cols, c.temperature, log);
  Buffer grad_input(c.dtype, static_cast<std::size_t>(c.rows * c.cols));
  grad_input.poison();

  SoftmaxBackwardArgs args;
  args.dtype = c.dtype;
  args.rows = c.rows;
  args.cols = c.cols;
  args.grad_output_row_stride = stride;
  args.output_row_stride = stride;
  args.temperature = c.temperature;
  args.kind = c.kind;
  const std::size_t offset_bytes = static_cast<std::size_t>(c.offset) * dtype_size(c.dtype);
  run_on_backend(c.backend, {&grad_output, &output}, {&grad_input}, 0,
                 [&](const std::vector<const void*>& in, const std::vector<void*>& out, void*, void* stream) {
                   args.grad_output = static_cast<const unsigned char*>(in[0]) + offset_bytes;
                   args.output = static_cast<const unsigned char*>(in[1]) + offset_bytes;
                   args.grad_input = out[0];
                   FUSEDKD_ON_BACKEND(c.backend, stream, softmax_backward_cpu(args),
                                      softmax_backward_cuda(args, FUSEDKD_TEST_STREAM(stream)));
                 });
  const double error = relative_error(grad_input.values(), ref, resolution_floor(c.dtype));
  EXPECT_LT(error, tolerance(c.dtype)) << case_name({c, 0});
}

std::vector<Case> all_cases() {
  struct Shape {
    std::int64_t rows, cols, pad, offset;
    double masked;
  };
  // Every row-length regime of the CUDA dispatch (sub-warp, warp, block tiles, two-read rows),
  // the CPU kernels' scalar tails and their short rows (up to 31 elements, 16 rows at a time:
  // full and partial groups, strided, misaligned, masked).
  const Shape shapes[] = {{0, 5, 0, 0, 0},       {1, 1, 0, 0, 0},      {5, 3, 2, 1, 0},
                          {37, 7, 0, 0, 0},      {8, 33, 1, 0, 0},     {6, 130, 0, 3, 0.2},
                          {4, 1031, 0, 0, 0},    {3, 4096, 4, 0, 0},   {2, 5000, 0, 1, 0},
                          {2, 16384, 0, 0, 0.1}, {2, 20000, 3, 0, 0},  {1, 131072, 0, 0, 0},
                          {17, 16, 0, 0, 0},     {20, 31, 1, 2, 0.2}};
  const double temperatures[] = {1.0, 0.05, 0.5, 4.0, 20.0, 100.0};
  const DType dtypes[] = {DType::Float32, DType::Float64, DType::Float16, DType::BFloat16};
  std::vector<Case> cases;
  int t = 0;
  for (Backend backend : {Backend::Cpu, Backend::Cuda})
    for (DType dtype : dtypes)
      for (SoftmaxKind kind : {SoftmaxKind::Softmax, SoftmaxKind::LogSoftmax})
        for (const Shape& s : shapes)
          cases.push_back({backend, dtype, kind, s.rows, s.cols, s.pad, s.offset, s.masked,
                           temperatures[t++ % 6]});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(All, SoftmaxKernel, ::testing::ValuesIn(all_cases()), case_name);

// ---------------------------------------------------------------- launcher checks, CPU executor
// (The shared math and the dtype conversions are tested in tests/test_math.cpp.)

TEST(Launchers, RejectBadArguments) {
  std::vector<float> x(8, 0.f), y(8, 0.f);
  SoftmaxForwardArgs args;
  args.input = x.data();
  args.output = y.data();
  args.rows = 2;
  args.cols = 4;
  args.input_row_stride = 4;
  SoftmaxForwardArgs bad = args;
  bad.cols = 0;
  EXPECT_THROW(softmax_forward_cpu(bad), std::invalid_argument);
  bad = args;
  bad.temperature = 0;
  EXPECT_THROW(softmax_forward_cpu(bad), std::invalid_argument);
  bad.temperature = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(softmax_forward_cpu(bad), std::invalid_argument);
  bad.temperature = std::numeric_limits<double>::infinity();
  EXPECT_THROW(softmax_forward_cpu(bad), std::invalid_argument);
  bad = args;
  bad.output = nullptr;
  EXPECT_THROW(softmax_forward_cpu(bad), std::invalid_argument);
  bad = args;
  bad.rows = 0;
  bad.input = bad.output = nullptr;
  EXPECT_NO_THROW(softmax_forward_cpu(bad));  // an empty batch needs no memory
}

// Forward arguments for `rows` contiguous float32 rows of `cols` at temperature T.
SoftmaxForwardArgs contiguous_forward_args(const void* input, void* output, std::int64_t rows, std::int64_t cols,
                                           double T, SoftmaxKind kind = SoftmaxKind::Softmax) {
  SoftmaxForwardArgs args;
  args.input = input;
  args.output = output;
  args.rows = rows;
  args.cols = cols;
  args.input_row_stride = cols;
  args.temperature = T;
  args.kind = kind;
  return args;
}

// A caller's own parallel_for (as the LibTorch ops pass in) gets every row exactly once.
// (The CPU cases above run once per instruction set: tests/CMakeLists.txt sets FUSEDKD_CPU_ISA.)
TEST(CpuExecutor, CustomParallelForCoversEveryRowOnce) {
  const std::int64_t rows = 101, cols = 77;
  const Buffer input = Buffer::from(DType::Float32, random_logits(rows, cols, 5));
  Buffer output(DType::Float32, rows * cols);
  output.poison();
  std::vector<int> visits(rows, 0);
  CpuExecutor executor;
  executor.parallel_for = [&](std::int64_t n, std::int64_t grain, const CpuExecutor::Body& body) {
    EXPECT_EQ(n, rows);
    for (std::int64_t begin = 0; begin < n; begin += 3) {
      const std::int64_t end = std::min(n, begin + 3);
      for (std::int64_t r = begin; r < end; ++r) ++visits[r];
      body(begin, end);
    }
    (void)grain;
  };
  softmax_forward_cpu(contiguous_forward_args(input.bytes.data(), output.data(), rows, cols, 2.0), executor);
  for (int v : visits) EXPECT_EQ(v, 1);
  EXPECT_LT(relative_error(output.values(), softmax_reference(input.values(), rows, cols, 2.0, false)),
            5e-6);
}

// Short rows go 16 at a time on the CPU: a row's output is the same bits whichever rows share its
// group (tasks of 1, 7 or all rows handed out last to first), forward and backward, both kinds.
// The default executor (OpenMP when the library has it) hands an exception thrown in a task back
// to the caller instead of terminating the process.
TEST(CpuExecutor, AnExceptionInATaskReachesTheCaller) {
  const CpuExecutor executor;
  std::atomic<int> calls{0};
  EXPECT_THROW(executor.run(64, 1,
                            [&](std::int64_t begin, std::int64_t) {
                              ++calls;
                              if (begin == 37) throw std::runtime_error("task 37");
                            }),
               std::runtime_error);
  EXPECT_GE(calls.load(), 1);
  int sum = 0;  // and it still runs work afterwards
  executor.run(8, 8, [&](std::int64_t begin, std::int64_t end) { sum += static_cast<int>(end - begin); });
  EXPECT_EQ(sum, 8);
}

TEST(CpuExecutor, ShortRowsDoNotDependOnTheirGroup) {
  const std::int64_t rows = 45, cols = 10;
  const Buffer input = Buffer::from(DType::Float32, random_logits(rows, cols, 6));
  const Buffer upstream = Buffer::from(DType::Float32, random_logits(rows, cols, 7));
  for (SoftmaxKind kind : {SoftmaxKind::Softmax, SoftmaxKind::LogSoftmax}) {
    // Forward, then backward from that output, with tasks of `task_rows` rows.
    auto run = [&](std::int64_t task_rows) {
      CpuExecutor executor;
      executor.parallel_for = [&](std::int64_t n, std::int64_t, const CpuExecutor::Body& body) {
        for (std::int64_t b = n; b > 0; b -= task_rows) body(std::max<std::int64_t>(0, b - task_rows), b);
      };
      std::vector<float> output(rows * cols), grad(rows * cols);
      softmax_forward_cpu(contiguous_forward_args(input.bytes.data(), output.data(), rows, cols, 3.0, kind), executor);
      SoftmaxBackwardArgs backward;
      backward.grad_output = upstream.bytes.data();
      backward.output = output.data();
      backward.grad_input = grad.data();
      backward.rows = rows;
      backward.cols = cols;
      backward.grad_output_row_stride = backward.output_row_stride = cols;
      backward.temperature = 3.0;
      backward.kind = kind;
      softmax_backward_cpu(backward, executor);
      output.insert(output.end(), grad.begin(), grad.end());
      return output;
    };
    const std::vector<float> whole = run(rows);
    EXPECT_EQ(whole, run(1));
    EXPECT_EQ(whole, run(7));
  }
}

// The CPU sweeps read and write each row through one index, so an output may be its input (and a
// gradient its upstream gradient): the same bits as out of place, 16-bit rows included (read as
// they lie, the numerators kept in a scratch row).
TEST(CpuSoftmax, InPlaceGivesTheSameBits) {
  for (DType dtype : {DType::Float32, DType::BFloat16, DType::Float16})
    for (std::int64_t cols : {10, 1500})
      for (SoftmaxKind kind : {SoftmaxKind::Softmax, SoftmaxKind::LogSoftmax}) {
        const std::int64_t rows = 37;
        const Buffer input = Buffer::from(dtype, random_logits(rows, cols, 8, 3.0));
        const Buffer upstream = Buffer::from(dtype, random_logits(rows, cols, 9));
        Buffer apart(dtype, static_cast<std::size_t>(rows * cols));
        SoftmaxForwardArgs forward = contiguous_forward_args(input.bytes.data(), apart.bytes.data(), rows, cols, 2.0, kind);
        forward.dtype = dtype;
        softmax_forward_cpu(forward);
        Buffer in_place = input;
        forward.input = forward.output = in_place.bytes.data();
        softmax_forward_cpu(forward);
        EXPECT_EQ(apart.bytes, in_place.bytes) << "forward, cols " << cols;

        SoftmaxBackwardArgs backward;
        backward.output = apart.bytes.data();
        backward.dtype = dtype;
        backward.rows = rows;
        backward.cols = cols;
        backward.grad_output_row_stride = backward.output_row_stride = cols;
        backward.temperature = 2.0;
        backward.kind = kind;
        Buffer grad(dtype, static_cast<std::size_t>(rows * cols)), grad_in_place = upstream;
        backward.grad_output = upstream.bytes.data();
        backward.grad_input = grad.bytes.data();
        softmax_backward_cpu(backward);
        backward.grad_output = backward.grad_input = grad_in_place.bytes.data();
        softmax_backward_cpu(backward);
        EXPECT_EQ(grad.bytes, grad_in_place.bytes) << "backward, cols " << cols;
      }
}

}  // namespace
}  // namespace fusedkd::testing

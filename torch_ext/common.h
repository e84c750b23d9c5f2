// Shared pieces of the LibTorch ops: argument checks with op-named messages, the mapping to the
// kernel library's types, and the row view of a [*, V] tensor.
#pragma once

#include <ATen/ATen.h>

#include <functional>

#include "fusedkd/cpu_executor.h"
#include "fusedkd/dtype.h"
#include "fusedkd/feature.h"

namespace fusedkd::torch_ext {

// `name` must be a defined float32/float64/float16/bfloat16 tensor with >= 1 dim and a last dim
// of size 1 .. 2^31-1.
void check_logits(const char* op, const char* name, const at::Tensor& x);
void check_temperature(const char* op, double temperature);
void check_same_device(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                       const at::Tensor& b);

DType kernel_dtype(at::ScalarType type);
at::ScalarType scalar_type(DType dtype);

// A [*, V] tensor seen as rows: every row's elements are contiguous and row r starts at
// data + r * row_stride. Views whose leading dims collapse to one stride are used as they are;
// anything else is copied to contiguous memory first.
struct RowView {
  at::Tensor tensor;
  std::int64_t rows;
  std::int64_t cols;
  std::int64_t row_stride;
};
RowView row_view(const at::Tensor& x);

// Runs a kernel launcher, turning the kernel library's std::exception (bad labels found on the
// host, CUDA launch errors) into a c10::Error that names the op (a RuntimeError in Python).
template <typename Fn>
void launch_kernel(const char* op, Fn&& fn) {
  try {
    fn();
  } catch (const c10::Error&) {
    throw;
  } catch (const std::exception& e) {
    TORCH_CHECK(false, op, ": ", e.what());
  }
}

// fusedkd::_scale_grad_, the backward of every loss op: grad *= grad_output in place, where
// grad_output is one value (also a broadcast one), the leading dims of grad (one factor per row;
// grad's rows must be contiguous blocks), or grad's shape (one factor per element). `launch` runs
// the kernel on grad's device.
void scale_grad_op(at::Tensor& grad, const at::Tensor& grad_output,
                   const std::function<void(const ScaleElementsArgs&)>& launch);
// Calls fusedkd::_scale_grad_ through the dispatcher.
void scale_gradient(at::Tensor& grad, const at::Tensor& grad_output);

// The CPU kernels run on LibTorch's intra-op thread pool (at::parallel_for).
const CpuExecutor& torch_cpu_executor();

}  // namespace fusedkd::torch_ext

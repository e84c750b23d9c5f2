// Shared pieces of the LibTorch ops: argument checks with op-named messages, the mapping to the
// kernel library's types, the row view of a [*, V] tensor, reductions, op handles.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <initializer_list>
#include <string>

#include "fusedkd/cpu_executor.h"
#include "fusedkd/dtype.h"

namespace fusedkd::torch_ext {

// `name` must be a defined float32/float64/float16/bfloat16 tensor.
void check_float_tensor(const char* op, const char* name, const at::Tensor& x);
// ... with >= 1 dim and a last dim of size 1 .. 2^31-1.
void check_logits(const char* op, const char* name, const at::Tensor& x);
void check_temperature(const char* op, double temperature);
void check_same_device(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                       const at::Tensor& b);

DType kernel_dtype(at::ScalarType type);
at::ScalarType scalar_type(DType dtype);
// The loss dtype of an op over inputs of these dtypes (fusedkd/dtype.h: loss_dtype, the one rule):
// float64 when one is float64, else float32.
at::ScalarType loss_scalar_type(std::initializer_list<at::ScalarType> inputs);

// The dtype of the gradient buffer a loss op's forward writes for an input, for grad_output = 1
// (GradientFromForward scales it by grad_output, then casts it to the input's dtype): float32 for a
// float16 input, else the input's dtype. A float16 buffer would round the gradient before the
// scaling: under loss scaling (GradScaler's 65536) small gradients would be lost to underflow, and
// with |grad_output| < 1 a gradient above 65504 would be inf.
at::ScalarType gradient_buffer_type(at::ScalarType input);
// The dtype the kernels read an input in: gradient_buffer_type when its gradient is wanted (most
// kernels write a gradient in the dtype they read; the CPU soft-target, feature_mse and
// attention_transfer kernels read float16 and write float32 themselves: backend.h, read_type),
// else the input's own.
at::ScalarType kernel_input_type(const at::Tensor& x, bool gradient_wanted);
// x's options with its gradient buffer's dtype (Meta kernels).
at::TensorOptions gradient_buffer_options(const at::Tensor& x);

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

// The `reduction` argument of the loss ops (and, as its integer code, of their internal ops).
enum class Reduction : int64_t { None = 0, Sum = 1, Mean = 2, BatchMean = 3 };
// "none", "sum", "mean" and, where `allow_batchmean`, "batchmean"; an error naming the op else.
Reduction parse_reduction(const char* op, c10::string_view reduction, bool allow_batchmean);

// The typed handle of a registered op ("fusedkd::name"); callers keep it in a function-local
// static, so the lookup runs once.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// A loss launcher's outputs in `args`: the loss, each gradient when wanted (else null), and a
// workspace of workspace_bytes(args) bytes allocated with `options` (call it last: the size may
// depend on every other argument). The returned tensor holds the workspace: keep it until the
// launch has been enqueued (the caching allocator keeps it for the stream).
template <typename Args>
at::Tensor bind_outputs(Args& args, const at::Tensor& loss, bool grad_student, const at::Tensor& gs,
                        bool grad_teacher, const at::Tensor& gt, std::size_t (*workspace_bytes)(const Args&),
                        const at::TensorOptions& options) {
  args.loss = loss.mutable_data_ptr();
  args.grad_student = grad_student ? gs.mutable_data_ptr() : nullptr;
  args.grad_teacher = grad_teacher ? gt.mutable_data_ptr() : nullptr;
  at::Tensor workspace = at::empty({static_cast<int64_t>(workspace_bytes(args))}, options.dtype(at::kByte));
  args.workspace = workspace.mutable_data_ptr();
  return workspace;
}

// The CPU kernels run on LibTorch's intra-op thread pool (at::parallel_for).
const CpuExecutor& torch_cpu_executor();

}  // namespace fusedkd::torch_ext

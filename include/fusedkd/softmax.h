// Temperature softmax and log-softmax over the last dim: the kernel library's launchers.
// Raw pointers in, no LibTorch: the ops in torch_ext/ call these after checking their arguments.
#pragma once

#include <cstdint>

#include "fusedkd/cpu_executor.h"
#include "fusedkd/dtype.h"

struct CUstream_st;  // cudaStream_t without the CUDA headers

namespace fusedkd {

enum class SoftmaxKind : std::int8_t { Softmax, LogSoftmax };

// `rows` rows of `cols` elements; row r starts `r * row_stride` elements after the base pointer
// and its elements are contiguous. Output rows are contiguous (row stride `cols`).
struct SoftmaxForwardArgs {
  const void* input = nullptr;
  void* output = nullptr;
  DType dtype = DType::Float32;  // input and output
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t input_row_stride = 0;
  double temperature = 1.0;
  SoftmaxKind kind = SoftmaxKind::Softmax;
};

// grad_input = d loss / d logits from grad_output and the forward's output (softmax or
// log-softmax, as `kind` says). All three share one dtype; grad_input rows are contiguous.
struct SoftmaxBackwardArgs {
  const void* grad_output = nullptr;
  const void* output = nullptr;
  void* grad_input = nullptr;
  DType dtype = DType::Float32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t grad_output_row_stride = 0;
  std::int64_t output_row_stride = 0;
  double temperature = 1.0;
  SoftmaxKind kind = SoftmaxKind::Softmax;
};

// Throw std::invalid_argument for arguments no kernel can run with (cols < 1, bad strides,
// temperature not finite and positive, null pointers with rows > 0).
void softmax_forward_cpu(const SoftmaxForwardArgs& args, const CpuExecutor& executor = {});
void softmax_backward_cpu(const SoftmaxBackwardArgs& args, const CpuExecutor& executor = {});

// Enqueue on `stream` (device pointers; the current device must own them). Never synchronise.
// Throw std::runtime_error when a launch fails. Defined only in builds with CUDA
// (fusedkd/build_config.h: FUSEDKD_WITH_CUDA).
void softmax_forward_cuda(const SoftmaxForwardArgs& args, CUstream_st* stream);
void softmax_backward_cuda(const SoftmaxBackwardArgs& args, CUstream_st* stream);

}  // namespace fusedkd

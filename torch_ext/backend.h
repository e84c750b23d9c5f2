// What one device type brings to the ops: the kernel library's launchers for that device and the
// dtypes its kernels compute a (student, teacher) pair in. The ops' bodies (ops.h) are written once
// against a Backend; cpu_backend() and cuda_backend() are the two there are, and
// register_backend_kernels<> registers every internal op for one of them (backend_cpu.cpp,
// backend_cuda.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <tuple>
#include <utility>

#include "common.h"
#include "fusedkd/feature.h"
#include "fusedkd/scale.h"
#include "fusedkd/soft_target.h"
#include "fusedkd/softmax.h"

namespace fusedkd::torch_ext {

struct Backend {
  // The (student, teacher) dtypes the kernels compute a pair in: the pair itself on the CPU,
  // cuda_kernel_dtypes (a promotion, fusedkd/dtype.h) on CUDA.
  DTypePair (*compute_dtypes)(DType student, DType teacher);
  void (*softmax_forward)(const SoftmaxForwardArgs&);
  void (*softmax_backward)(const SoftmaxBackwardArgs&);
  void (*soft_target)(const SoftTargetArgs&);
  void (*scale_elements)(const ScaleElementsArgs&);
  void (*feature_mse)(const FeatureMseArgs&);
  void (*attention_transfer)(const AttentionTransferArgs&);
  void (*similarity_preserving)(const SimilarityPreservingArgs&);
  void (*projected_feature_mse)(const ProjectedFeatureMseArgs&);
  void (*projection_backward)(const ProjectionBackwardArgs&);
  // The soft-target, feature_mse and attention_transfer kernels read float16 inputs as they are and
  // write their gradients in float32 (their args' float16_gradients_in_float32): the CPU's; CUDA's
  // read a float32 copy instead.
  bool float16_gradients_in_float32;
};

// The dtype those loss kernels of `backend` read an input in: kernel_input_type (common.h), or the
// input's own where the kernels write a float16 input's float32 gradient themselves.
inline at::ScalarType read_type(const Backend& backend, const at::Tensor& x, bool gradient_wanted) {
  return backend.float16_gradients_in_float32 ? x.scalar_type() : kernel_input_type(x, gradient_wanted);
}
// Either way the kernels write an input's gradient in the gradient buffer's dtype of what they
// read (common.h: gradient_buffer_options): a float16 input they read is read only without a
// gradient, or with one where they write it in float32 (fusedkd::gradient_dtype).

// The CPU kernels on LibTorch's intra-op thread pool.
const Backend& cpu_backend();
// The CUDA kernels on LibTorch's current stream and cuBLAS handle (builds with CUDA only).
const Backend& cuda_backend();

// An op body `R body(const Backend&, A...)` as the kernel of one backend: it runs with the device
// of its first argument (a tensor) current, so that the current stream and handle are that
// device's.
template <auto Body, const Backend& (*GetBackend)()>
struct OnBackend;
template <typename R, typename... A, R (*Body)(const Backend&, A...), const Backend& (*GetBackend)()>
struct OnBackend<Body, GetBackend> {
  static R call(A... args) {
    const c10::OptionalDeviceGuard guard(at::device_of(std::get<0>(std::forward_as_tuple(args...))));
    return Body(GetBackend(), std::forward<A>(args)...);
  }
};

}  // namespace fusedkd::torch_ext

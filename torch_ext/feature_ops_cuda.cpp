// CUDA registrations of the feature-map internal ops: kernels on LibTorch's current stream, GEMMs
// on LibTorch's cuBLAS handle (which it binds to that stream).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "feature_ops.h"
#include "fusedkd/soft_target.h"

namespace fusedkd::torch_ext {
namespace {

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }

const FeatureBackend& cuda_backend() {
  static const FeatureBackend backend{
      [](const FeatureMseArgs& a) { feature_mse_cuda(a, stream()); },
      [](const AttentionTransferArgs& a) { attention_transfer_cuda(a, stream()); },
      [](const SimilarityPreservingArgs& a) { similarity_preserving_cuda(a, at::cuda::getCurrentCUDABlasHandle()); },
      [](const ProjectedFeatureMseArgs& a) { projected_feature_mse_cuda(a, at::cuda::getCurrentCUDABlasHandle()); },
      [](const ProjectionBackwardArgs& a) { projection_backward_cuda(a, at::cuda::getCurrentCUDABlasHandle()); },
      [](DType student, DType teacher) { return cuda_kernel_dtypes(student, teacher); }};
  return backend;
}

Tensor3 mse_cuda(const at::Tensor& s, const at::Tensor& t, int64_t reduction, bool gs, bool gt) {
  const c10::cuda::CUDAGuard guard(s.device());
  return feature_mse_forward_op(s, t, reduction, gs, gt, cuda_backend());
}
Tensor3 attention_cuda(const at::Tensor& s, const at::Tensor& t, double p, int64_t reduction, bool gs, bool gt) {
  const c10::cuda::CUDAGuard guard(s.device());
  return attention_transfer_forward_op(s, t, p, reduction, gs, gt, cuda_backend());
}
Tensor3 similarity_cuda(const at::Tensor& s, const at::Tensor& t, bool gs, bool gt) {
  const c10::cuda::CUDAGuard guard(s.device());
  return similarity_preserving_forward_op(s, t, gs, gt, cuda_backend());
}
Tensor3 projected_cuda(const at::Tensor& s, const at::Tensor& w, const std::optional<at::Tensor>& b,
                       const at::Tensor& t, int64_t reduction, bool keep, bool gt) {
  const c10::cuda::CUDAGuard guard(s.device());
  return projected_feature_mse_forward_op(s, w, b, t, reduction, keep, gt, cuda_backend());
}
Tensor3 projection_backward_cuda_kernel(const at::Tensor& g, const at::Tensor& s, const at::Tensor& w, bool gx,
                                        bool gw, bool gb) {
  const c10::cuda::CUDAGuard guard(s.device());
  return projection_backward_op(g, s, w, gx, gw, gb, cuda_backend());
}
}  // namespace
}  // namespace fusedkd::torch_ext

TORCH_LIBRARY_IMPL(fusedkd, CUDA, m) {
  using namespace fusedkd::torch_ext;
  m.impl("_feature_mse_forward", &mse_cuda);
  m.impl("_attention_transfer_forward", &attention_cuda);
  m.impl("_similarity_preserving_forward", &similarity_cuda);
  m.impl("_projected_feature_mse_forward", &projected_cuda);
  m.impl("_projection_backward", &projection_backward_cuda_kernel);
}

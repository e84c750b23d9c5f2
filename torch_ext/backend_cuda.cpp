// The CUDA backend: the kernel library's CUDA launchers on LibTorch's current stream (GEMMs on its
// cuBLAS handle, which LibTorch binds to that stream), and the CUDA registration of every
// internal op. The ops compute a dtype pair the kernels do not take in cuda_kernel_dtypes.
#include <ATen/cuda/CUDAContext.h>

#include "ops.h"

namespace fusedkd::torch_ext {
namespace {

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }
cublasHandle_t blas() { return at::cuda::getCurrentCUDABlasHandle(); }

}  // namespace

const Backend& cuda_backend() {
  static const Backend backend{
      [](DType student, DType teacher) { return cuda_kernel_dtypes(student, teacher); },
      [](const SoftmaxForwardArgs& a) { softmax_forward_cuda(a, stream()); },
      [](const SoftmaxBackwardArgs& a) { softmax_backward_cuda(a, stream()); },
      [](const SoftTargetArgs& a) { soft_target_loss_cuda(a, stream()); },
      [](const ScaleElementsArgs& a) { scale_elements_cuda(a, stream()); },
      [](const FeatureMseArgs& a) { feature_mse_cuda(a, stream()); },
      [](const AttentionTransferArgs& a) { attention_transfer_cuda(a, stream()); },
      [](const SimilarityPreservingArgs& a) { similarity_preserving_cuda(a, blas()); },
      [](const ProjectedFeatureMseArgs& a) { projected_feature_mse_cuda(a, blas()); },
      [](const ProjectionBackwardArgs& a) { projection_backward_cuda(a, blas()); },
      /*float16_gradients_in_float32=*/false};
  return backend;
}

}  // namespace fusedkd::torch_ext

TORCH_LIBRARY_IMPL(fusedkd, CUDA, m) {
  using namespace fusedkd::torch_ext;
  register_backend_kernels<cuda_backend>(m);
}

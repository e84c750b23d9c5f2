// The CPU backend: the kernel library's CPU launchers on LibTorch's intra-op thread pool, and the
// CPU registration of every internal op.
#include "common.h"
#include "ops.h"

namespace fusedkd::torch_ext {

const Backend& cpu_backend() {
  static const Backend backend{
      [](DType student, DType teacher) { return DTypePair{student, teacher}; },
      [](const SoftmaxForwardArgs& a) { softmax_forward_cpu(a, torch_cpu_executor()); },
      [](const SoftmaxBackwardArgs& a) { softmax_backward_cpu(a, torch_cpu_executor()); },
      [](const SoftTargetArgs& a) { soft_target_loss_cpu(a, torch_cpu_executor()); },
      [](const ScaleElementsArgs& a) { scale_elements_cpu(a, torch_cpu_executor()); },
      [](const FeatureMseArgs& a) { feature_mse_cpu(a, torch_cpu_executor()); },
      [](const AttentionTransferArgs& a) { attention_transfer_cpu(a, torch_cpu_executor()); },
      [](const SimilarityPreservingArgs& a) { similarity_preserving_cpu(a, torch_cpu_executor()); },
      [](const ProjectedFeatureMseArgs& a) { projected_feature_mse_cpu(a, torch_cpu_executor()); },
      [](const ProjectionBackwardArgs& a) { projection_backward_cpu(a, torch_cpu_executor()); },
      /*float16_gradients_in_float32=*/true};
  return backend;
}

}  // namespace fusedkd::torch_ext

TORCH_LIBRARY_IMPL(fusedkd, CPU, m) {
  using namespace fusedkd::torch_ext;
  register_backend_kernels<cpu_backend>(m);
}

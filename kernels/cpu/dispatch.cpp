// The CPU launchers of softmax, the soft-target losses and the gradient scaling (feature_launch.cpp
// has the feature losses'), and the run-time choice of the instruction-set copy.
#include <cstdlib>
#include <cstring>

#include "cpu_kernels.h"
#include "../scale_rows.h"
#include "../validate.h"

namespace fusedkd {
namespace cpu {

Isa selected_isa() {
  static const Isa isa = [] {
    Isa best = Isa::Baseline;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::Avx2;
    if (best == Isa::Avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      best = Isa::Avx512;
#endif
    if (const char* cap = std::getenv("FUSEDKD_CPU_ISA")) {
      if (std::strcmp(cap, "baseline") == 0) best = Isa::Baseline;
      else if (std::strcmp(cap, "avx2") == 0 && best == Isa::Avx512) best = Isa::Avx2;
    }
    return best;
  }();
  return isa;
}

}  // namespace cpu

void softmax_forward_cpu(const SoftmaxForwardArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  FUSEDKD_CPU_DISPATCH(softmax_forward, args, executor)
}

void softmax_backward_cpu(const SoftmaxBackwardArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  FUSEDKD_CPU_DISPATCH(softmax_backward, args, executor)
}

void soft_target_loss_cpu(const SoftTargetArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  detail::validate_labels_on_host(args);
  if (args.rows == 0) {
    // No rows: the total is 0 (nothing else to write).
    if (!args.per_row_loss) {
      if (soft_target_uses_double(args)) *static_cast<double*>(args.loss) = 0.0;
      else *static_cast<float*>(args.loss) = 0.0f;
    }
    return;
  }
  FUSEDKD_CPU_DISPATCH(soft_target_loss, args, executor)
}

void scale_rows_cpu(const ScaleRowsArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  FUSEDKD_CPU_DISPATCH(scale_rows, args, executor)
}

void scale_elements_cpu(const ScaleElementsArgs& args, const CpuExecutor& executor) {
  detail::validate(args);
  if (args.numel == 0) return;
  if (detail::scales_by_rows(args)) return scale_rows_cpu(detail::as_rows(args), executor);
  FUSEDKD_CPU_DISPATCH(scale_elements, args, executor)
}

}  // namespace fusedkd

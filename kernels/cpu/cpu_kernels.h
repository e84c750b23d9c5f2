// The per-instruction-set copies of the CPU kernels (see kernels/CMakeLists.txt) and the
// run-time choice between them.
#pragma once

#include "fusedkd/soft_target.h"
#include "fusedkd/softmax.h"

#define FUSEDKD_DECLARE_CPU_KERNELS(isa)                                                  \
  namespace fusedkd::cpu::isa {                                                         \
  void softmax_forward(const SoftmaxForwardArgs& args, const CpuExecutor& executor);    \
  void softmax_backward(const SoftmaxBackwardArgs& args, const CpuExecutor& executor);  \
  void soft_target_loss(const SoftTargetArgs& args, const CpuExecutor& executor);       \
  void scale_rows(const ScaleRowsArgs& args, const CpuExecutor& executor);              \
  }

FUSEDKD_DECLARE_CPU_KERNELS(baseline)
FUSEDKD_DECLARE_CPU_KERNELS(avx2)
FUSEDKD_DECLARE_CPU_KERNELS(avx512)

namespace fusedkd::cpu {

enum class Isa { Baseline, Avx2, Avx512 };
// The widest copy this CPU runs (FUSEDKD_CPU_ISA=baseline|avx2|avx512 in the environment caps it).
Isa selected_isa();

}  // namespace fusedkd::cpu

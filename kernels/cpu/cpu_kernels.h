// The per-instruction-set copies of the CPU kernels (see kernels/CMakeLists.txt) and the
// run-time choice between them.
#pragma once

#include "fusedkd/feature.h"
#include "fusedkd/scale.h"
#include "fusedkd/soft_target.h"
#include "fusedkd/softmax.h"

namespace fusedkd::cpu {

// Elements one task of a parallel loop handles (about 16k: enough work to amortise the
// scheduling). feature_mse also sums in chunks of this size, so its total does not depend on the
// thread count.
// (An unnamed namespace: each instruction-set copy keeps its own, so no copy built for a wider
// instruction set can stand in for another's.)
constexpr std::int64_t kTaskElements = 1 << 14;
namespace {
std::int64_t task_count(std::int64_t elements) { return (elements + kTaskElements - 1) / kTaskElements; }
// Rows handed to one task: rows of `cols` elements making some kTaskElements, at least 1.
std::int64_t rows_per_task(std::int64_t cols) {
  const std::int64_t rows = kTaskElements / cols;
  return rows < 1 ? 1 : rows;
}
}  // namespace

// Rows a_s, a_t ([rows, cols], contiguous, float or double) normalised like F.normalize; per row
// row_loss[r] = scale * ||A_s - A_t||^2 and, when non-null, d_s / d_t = the gradient of that loss
// with respect to a_s / a_t (shared by attention_transfer and similarity_preserving).
struct NormalizedRowsArgs {
  const void* a_s = nullptr;
  const void* a_t = nullptr;
  bool is_double = false;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  double scale = 1.0;
  void* row_loss = nullptr;
  void* d_s = nullptr;
  void* d_t = nullptr;
};

}  // namespace fusedkd::cpu

#define FUSEDKD_DECLARE_CPU_KERNELS(isa)                                                  \
  namespace fusedkd::cpu::isa {                                                         \
  void softmax_forward(const SoftmaxForwardArgs& args, const CpuExecutor& executor);    \
  void softmax_backward(const SoftmaxBackwardArgs& args, const CpuExecutor& executor);  \
  void soft_target_loss(const SoftTargetArgs& args, const CpuExecutor& executor);       \
  void scale_rows(const ScaleRowsArgs& args, const CpuExecutor& executor);              \
  void feature_mse(const FeatureMseArgs& args, const CpuExecutor& executor);            \
  void scale_elements(const ScaleElementsArgs& args, const CpuExecutor& executor);      \
  void attention_transfer(const AttentionTransferArgs& args, const CpuExecutor& executor); \
  void normalized_rows(const NormalizedRowsArgs& args, const CpuExecutor& executor);    \
  }

FUSEDKD_DECLARE_CPU_KERNELS(baseline)
FUSEDKD_DECLARE_CPU_KERNELS(avx2)
FUSEDKD_DECLARE_CPU_KERNELS(avx512)

namespace fusedkd::cpu {

enum class Isa { Baseline, Avx2, Avx512 };
// The widest copy this CPU runs (FUSEDKD_CPU_ISA=baseline|avx2|avx512 in the environment caps it).
Isa selected_isa();

}  // namespace fusedkd::cpu

// Calls the copy of `fn` for the selected instruction set.
#if defined(FUSEDKD_CPU_X86_COPIES)
#define FUSEDKD_CPU_DISPATCH(fn, args, executor)                         \
  switch (::fusedkd::cpu::selected_isa()) {                              \
    case ::fusedkd::cpu::Isa::Avx512: return ::fusedkd::cpu::avx512::fn(args, executor);     \
    case ::fusedkd::cpu::Isa::Avx2: return ::fusedkd::cpu::avx2::fn(args, executor);         \
    case ::fusedkd::cpu::Isa::Baseline: return ::fusedkd::cpu::baseline::fn(args, executor); \
  }
#else  // one copy (not x86-64: kernels/CMakeLists.txt)
#define FUSEDKD_CPU_DISPATCH(fn, args, executor) return ::fusedkd::cpu::baseline::fn(args, executor);
#endif

// The per-instruction-set copies of the CPU kernels (see kernels/CMakeLists.txt) and the
// run-time choice between them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>

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
inline std::int64_t task_count(std::int64_t elements) { return (elements + kTaskElements - 1) / kTaskElements; }
// Rows handed to one task: rows of `cols` elements making some kTaskElements, at least 1.
inline std::int64_t rows_per_task(std::int64_t cols) {
  const std::int64_t rows = kTaskElements / cols;
  return rows < 1 ? 1 : rows;
}

// Runs body(begin, end) over [0, rows) in tasks of at least `grain` rows, the rows' blocks of
// `block` rows taken in a spread order, so that the contiguous share of the work each thread gets
// holds rows from all over [0, rows): rows whose cost depends on where they are (ignored labels at
// the end of a batch cost a zero row, not the math) are then shared out evenly. The executor
// splits a virtual row range as it would the rows; virtual block k is row block
// (k * stride) mod (blocks - 1), stride coprime with blocks - 1 and near (blocks - 1) / phi, and
// the last (possibly partial) block stays last; the body gets each virtual range as the pieces of
// row blocks it maps to. A block should span megabytes: measured at 4096 x 32,000, blocks of one
// row (128 KB) made the whole call 14% slower than the plain order, the access pattern costing
// more than the balance gained. Only for bodies that write each row's results in place (the order
// they run in changes nothing).
template <typename Body>
void run_rows_spread(const CpuExecutor& executor, std::int64_t rows, std::int64_t grain, std::int64_t block,
                     const Body& body) {
  const std::int64_t full = (rows + block - 1) / block - 1;  // the blocks before the last
  std::int64_t stride = static_cast<std::int64_t>(static_cast<double>(full) * 0.6180339887498949);
  if (stride < 1) stride = 1;
  while (full > 1 && std::gcd(stride, full) != 1) --stride;  // stops at 1 at the latest
  executor.run(rows, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t v = begin; v < end;) {
      const std::int64_t k = v / block, offset = v % block;
      const std::int64_t length = std::min(end - v, block - offset);
      const std::int64_t b =
          k < full ? static_cast<std::int64_t>(static_cast<unsigned __int128>(k) * stride % full) : k;
      body(b * block + offset, b * block + offset + length);
      v += length;
    }
  });
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

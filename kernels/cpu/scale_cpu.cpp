// CPU gradient scaling (fusedkd/scale.h): one factor for all elements, one per element, or one per
// row. Compiled once per instruction set, like the other kernel files.
#include "cpu_kernels.h"
#include "row_buffers.h"

namespace fusedkd::cpu::FUSEDKD_CPU_ISA {

void scale_rows(const ScaleRowsArgs& a, const CpuExecutor& executor) {
  executor.run(a.rows, rows_per_task(a.cols), [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r) {
      const std::int64_t i = a.per_row ? r : 0;
      const double factor = a.grad_output_is_double ? static_cast<const double*>(a.grad_output)[i]
                                                    : static_cast<const float*>(a.grad_output)[i];
      if (factor == 1.0) continue;
      with_storage_type(a.grad_dtype, [&](auto tag) {
        using T = decltype(tag);
        using Acc = acc_t<T>;
        T* __restrict g = static_cast<T*>(a.grad) + r * a.cols;
        const Acc f = static_cast<Acc>(factor);
#pragma omp simd
        for (std::int64_t j = 0; j < a.cols; ++j) g[j] = StoreFromAcc<T>::apply(load_as_acc(g[j]) * f);
      });
    }
  });
}

// One factor for all elements, or one per element (the launcher hands per-row factors to
// scale_rows).
void scale_elements(const ScaleElementsArgs& a, const CpuExecutor& executor) {
  const bool single = a.factor_group >= a.numel;
  const auto factor = [&](std::int64_t i) {
    return a.factors_are_double ? static_cast<const double*>(a.factors)[i] : static_cast<const float*>(a.factors)[i];
  };
  if (single && factor(0) == 1.0) return;  // loss.backward(): nothing to do
  with_storage_type(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    executor.run(task_count(a.numel), 1, [&](std::int64_t begin, std::int64_t end) {
      const std::int64_t first = begin * kTaskElements;
      const std::int64_t last = end * kTaskElements < a.numel ? end * kTaskElements : a.numel;
      T* __restrict g = static_cast<T*>(a.data);
      const auto scale = [&](const auto* __restrict f) {
        if (single) {
          const Acc f0 = static_cast<Acc>(f[0]);
#pragma omp simd
          for (std::int64_t i = first; i < last; ++i) g[i] = StoreFromAcc<T>::apply(load_as_acc(g[i]) * f0);
        } else {
#pragma omp simd
          for (std::int64_t i = first; i < last; ++i)
            g[i] = StoreFromAcc<T>::apply(static_cast<Acc>(load_as_acc(g[i]) * f[i]));
        }
      };
      if (a.factors_are_double) scale(static_cast<const double*>(a.factors));
      else scale(static_cast<const float*>(a.factors));
    });
  });
}

}  // namespace fusedkd::cpu::FUSEDKD_CPU_ISA

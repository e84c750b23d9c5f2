#include "fusedkd/cpu_executor.h"

#if defined(FUSEDKD_HAVE_OPENMP)
#include <omp.h>
#endif

namespace fusedkd {

void CpuExecutor::run(std::int64_t n, std::int64_t grain, const Body& body) const {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  if (parallel_for) {
    parallel_for(n, grain, body);
    return;
  }
  const std::int64_t tasks = (n + grain - 1) / grain;
#if defined(FUSEDKD_HAVE_OPENMP)
  if (tasks > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (std::int64_t task = 0; task < tasks; ++task) {
      const std::int64_t begin = task * grain;
      const std::int64_t end = begin + grain < n ? begin + grain : n;
      body(begin, end);
    }
    return;
  }
#endif
  (void)tasks;
  body(0, n);
}

}  // namespace fusedkd

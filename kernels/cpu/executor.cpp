#include "fusedkd/cpu_executor.h"

#include <atomic>
#include <exception>

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
    // An exception may not leave an OpenMP region (std::terminate): the first one thrown is kept,
    // the remaining tasks are skipped, and it is rethrown here, as at::parallel_for does.
    std::exception_ptr error;
    std::atomic<bool> failed{false};
#pragma omp parallel for schedule(static)
    for (std::int64_t task = 0; task < tasks; ++task) {
      if (failed.load(std::memory_order_relaxed)) continue;
      const std::int64_t begin = task * grain;
      const std::int64_t end = begin + grain < n ? begin + grain : n;
      try {
        body(begin, end);
      } catch (...) {
#pragma omp critical(fusedkd_executor_error)
        if (!error) error = std::current_exception();
        failed.store(true, std::memory_order_relaxed);
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  (void)tasks;
  body(0, n);
}

}  // namespace fusedkd

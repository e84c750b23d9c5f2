// How the CPU kernels run work in parallel. The kernel library does not depend on LibTorch, so a
// caller may hand in its own thread pool (the LibTorch ops pass at::parallel_for, which honours
// torch.set_num_threads); without one the kernels use OpenMP when the library was built with it.
#pragma once

#include <cstdint>
#include <functional>

namespace fusedkd {

struct CpuExecutor {
  using Body = std::function<void(std::int64_t begin, std::int64_t end)>;
  // Calls body(begin, end) over disjoint ranges covering [0, n), each at least `grain` long
  // except the last. Empty: the library's default (OpenMP, or serial without it). An exception a
  // body throws reaches the caller of run (the default rethrows the first one once every thread
  // has stopped; a pool handed in must do the same, as at::parallel_for does).
  std::function<void(std::int64_t n, std::int64_t grain, const Body& body)> parallel_for;

  void run(std::int64_t n, std::int64_t grain, const Body& body) const;
};

}  // namespace fusedkd

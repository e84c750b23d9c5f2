// Shared by the benchmarks: timing one call per iteration (wall clock on the CPU, CUDA events on
// the GPU) and the context every JSON output carries.
#pragma once

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <string>

#include "cuda_memory.h"  // testing/: peak CUDA memory, counted as the op tests count it
#include "fusedkd/build_config.h"

#if FUSEDKD_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>
#endif

namespace fusedkd::bench {

// Three untimed calls first, whatever the warm-up time: a large CPU output's first huge pages come
// from the kernel's compaction (a 0.5 GB gradient: about 640 ms on the first call, 160 ms on the
// second, 90 ms from the third on; docs/architecture.md), and one call of a large case outlasts
// Google Benchmark's time-based warm-up.
template <typename Body>
void time_loop(benchmark::State& state, bool cuda, Body&& body) {
  for (int i = 0; i < 3; ++i) body();
#if FUSEDKD_WITH_CUDA
  if (cuda) {
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
    for (auto _ : state) {
      cudaEventRecord(start, stream);
      body();
      cudaEventRecord(stop, stream);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      state.SetIterationTime(ms / 1e3);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return;
  }
#endif
  (void)cuda;
  for (auto _ : state) body();
}

// Normal random values times `scale`, drawn on `device` itself and then cast to `dtype` (drawing a
// billion values on the host for a CUDA case would take longer than timing it).
inline at::Tensor random_normal(at::IntArrayRef sizes, at::ScalarType dtype, const at::Device& device,
                                double scale = 1.0) {
  at::Tensor x = torch::randn(sizes, torch::TensorOptions().dtype(at::kFloat).device(device));
  if (scale != 1.0) x.mul_(scale);
  return x.to(dtype);
}

// Registers one case; CUDA cases report the CUDA-event time of time_loop.
template <typename Fn>
void register_case(const std::string& name, bool cuda, benchmark::TimeUnit unit, Fn fn) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) { fn(state); });
  b->Unit(unit)->MinWarmUpTime(0.1);
  if (cuda) b->UseManualTime();
}

inline int run_main(int argc, char** argv, void (*register_all)()) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::AddCustomContext("torch", TORCH_VERSION);
  benchmark::AddCustomContext("torch_threads", std::to_string(at::get_num_threads()));
  benchmark::AddCustomContext("cuda_device", torch::cuda::is_available() ? "yes" : "none");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace fusedkd::bench

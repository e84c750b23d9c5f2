// Shared by the benchmarks: timing one call per iteration (wall clock on the CPU, CUDA events on
// the GPU) and the context every JSON output carries.
#pragma once

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <string>

#include "fusedkd/build_config.h"

#if FUSEDKD_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>
#endif

namespace fusedkd::bench {

template <typename Body>
void time_loop(benchmark::State& state, bool cuda, Body&& body) {
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

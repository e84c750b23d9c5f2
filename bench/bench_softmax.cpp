// softmax_t / log_softmax_t against the LibTorch composites they replace (softmax(x / T),
// log_softmax(x / T)), forward and forward+backward, on the CPU and (when present) on CUDA.
// Counters: bytes_per_second over the minimal traffic (forward: read x, write y = 2X;
// forward+backward: 2X + read y, dy, write dx = 5X, X = R * V * element size).
// scripts/bench_table.py turns the JSON output into a table with the speedup over the composite.
#include <string>
#include <vector>

#include "bench_common.h"
#include "fusedkd/torch.h"

namespace {

using fusedkd::bench::random_normal;
using fusedkd::bench::time_loop;

struct Shape {
  int64_t rows;
  int64_t cols;
};

enum class Impl { Fusedkd, Composite };

at::Tensor forward(Impl impl, bool log, const at::Tensor& x, double temperature) {
  if (impl == Impl::Fusedkd) return log ? fusedkd::log_softmax_t(x, temperature) : fusedkd::softmax_t(x, temperature);
  return log ? torch::log_softmax(x / temperature, -1) : torch::softmax(x / temperature, -1);
}

void run_case(benchmark::State& state, Impl impl, bool log, bool backward, at::ScalarType dtype,
              bool cuda, Shape shape) {
  const auto device = cuda ? torch::kCUDA : torch::kCPU;
  const double temperature = 2.0;
  torch::manual_seed(0);
  const at::Tensor x0 = random_normal({shape.rows, shape.cols}, dtype, device, 3.0);
  const at::Tensor upstream = random_normal({shape.rows, shape.cols}, dtype, device);
  if (!backward) {
    torch::NoGradGuard no_grad;
    time_loop(state, cuda, [&] { benchmark::DoNotOptimize(forward(impl, log, x0, temperature)); });
  } else {
    const at::Tensor x = x0.clone().requires_grad_(true);
    time_loop(state, cuda, [&] {
      const at::Tensor y = forward(impl, log, x, temperature);
      benchmark::DoNotOptimize(torch::autograd::grad({y}, {x}, {upstream})[0]);
    });
  }
  const int64_t bytes = shape.rows * shape.cols * static_cast<int64_t>(c10::elementSize(dtype));
  state.SetBytesProcessed(state.iterations() * bytes * (backward ? 5 : 2));
  state.counters["rows"] = static_cast<double>(shape.rows);
  state.counters["cols"] = static_cast<double>(shape.cols);
}

void register_all() {
  const bool have_cuda = torch::cuda::is_available();
  const std::vector<Shape> cpu_shapes = {{256, 10}, {8192, 10}, {4096, 1000}, {512, 32000}};
  const std::vector<Shape> cuda_shapes = {{8192, 10}, {8192, 1000}, {4096, 32000}, {4096, 131072}, {1024, 262144}};
  for (bool cuda : {false, true}) {
    if (cuda && !have_cuda) continue;
    for (const Shape& shape : cuda ? cuda_shapes : cpu_shapes)
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16})
        for (bool log : {false, true})
          for (bool backward : {false, true})
            for (Impl impl : {Impl::Fusedkd, Impl::Composite}) {
              const std::string name = std::string(log ? "log_softmax_t" : "softmax_t") + "/" +
                                       (backward ? "fwd+bwd" : "fwd") + "/" +
                                       (impl == Impl::Fusedkd ? "fusedkd" : "composite") + "/" +
                                       (cuda ? "cuda" : "cpu") + "/" + c10::toString(dtype) + "/R" +
                                       std::to_string(shape.rows) + "xV" + std::to_string(shape.cols);
              fusedkd::bench::register_case(name, cuda, benchmark::kMicrosecond, [=](benchmark::State& state) {
                run_case(state, impl, log, backward, dtype, cuda, shape);
              });
            }
  }
}

}  // namespace

int main(int argc, char** argv) { return fusedkd::bench::run_main(argc, argv, register_all); }

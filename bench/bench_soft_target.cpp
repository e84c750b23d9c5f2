// kd_loss, kl_div, jsd, soft_mse, forward + backward (student requires grad, the teacher does not),
// against the LibTorch composites a PyTorch user writes for them; and, as "fwd+bwd-both", kd_loss
// and kl_div with the teacher's gradient too (mutual learning, where both networks train).
// bytes_per_second counts the minimal traffic of a fused forward+backward: read the student and
// the teacher, write the student gradient (3X, X = R * V * element size), and the teacher's with
// it (4X). scripts/bench_table.py pairs each fusedkd case with its composite.
#include <cmath>
#include <string>
#include <vector>

#include "bench_common.h"
#include "fusedkd/soft_target.h"
#include "fusedkd/torch.h"

namespace F = torch::nn::functional;

namespace {

using fusedkd::bench::random_normal;
using fusedkd::bench::time_loop;

struct Shape {
  int64_t rows, cols;
};

enum class Op { KdLossKl, KlDiv, Jsd, SoftMse };
const char* op_name(Op op) {
  switch (op) {
    case Op::KdLossKl: return "kd_loss_kl";
    case Op::KlDiv: return "kl_div";
    case Op::Jsd: return "jsd";
    case Op::SoftMse: return "soft_mse";
  }
  return "?";
}

constexpr double kT = 2.0;

at::Tensor fused(Op op, const at::Tensor& s, const at::Tensor& t, const at::Tensor& y) {
  switch (op) {
    case Op::KdLossKl: return fusedkd::kd_loss(s, t, y, kT, 0.5, 1.0, "kl");
    case Op::KlDiv: return fusedkd::kl_div(s, t, kT);
    case Op::Jsd: return fusedkd::jsd(s, t, kT, 0.5);
    case Op::SoftMse: return fusedkd::soft_mse(s, t, kT);
  }
  return {};
}

at::Tensor composite(Op op, const at::Tensor& s, const at::Tensor& t, const at::Tensor& y) {
  const at::Tensor lq = torch::log_softmax(s.to(at::kFloat) / kT, -1);
  const at::Tensor lp = torch::log_softmax(t.to(at::kFloat) / kT, -1);
  const auto batchmean = F::KLDivFuncOptions().reduction(torch::kBatchMean).log_target(true);
  switch (op) {
    case Op::KdLossKl: return F::cross_entropy(s.to(at::kFloat), y) + 0.5 * F::kl_div(lq, lp, batchmean);
    case Op::KlDiv: return F::kl_div(lq, lp, batchmean);
    case Op::Jsd: {
      const at::Tensor lm = torch::logsumexp(torch::stack({lp, lq}), 0) - std::log(2.0);
      return 0.5 * (F::kl_div(lm, lp, batchmean) + F::kl_div(lm, lq, batchmean));
    }
    case Op::SoftMse: return F::mse_loss(lq.exp(), lp.exp());
  }
  return {};
}

// What is timed: the composite, fusedkd as users get it, or (CUDA) fusedkd with long rows forced
// onto the streaming kernel, to compare it with the on-chip kernels at the same shape.
enum class Impl { Composite, Fused, FusedStreaming };
const char* impl_name(Impl impl) {
  switch (impl) {
    case Impl::Composite: return "composite";
    case Impl::Fused: return "fusedkd";
    case Impl::FusedStreaming: return "fusedkd-streaming";
  }
  return "?";
}

#if FUSEDKD_WITH_CUDA
// Sets the CUDA long-row policy for one benchmark and restores the default after it.
struct PolicyScope {
  explicit PolicyScope(bool streaming_only) {
    fusedkd::detail::CudaLongRowPolicy policy;
    policy.streaming_only = streaming_only;
    fusedkd::detail::set_cuda_long_row_policy(policy);
  }
  ~PolicyScope() { fusedkd::detail::set_cuda_long_row_policy({}); }
};
#endif

void run_case(benchmark::State& state, Op op, Impl impl, at::ScalarType dtype, bool cuda, Shape shape,
              bool both) {
  const bool ours = impl != Impl::Composite;
#if FUSEDKD_WITH_CUDA
  const PolicyScope policy(impl == Impl::FusedStreaming);
#endif
  const auto device = cuda ? torch::kCUDA : torch::kCPU;
  torch::manual_seed(0);
  const at::Tensor s = random_normal({shape.rows, shape.cols}, dtype, device, 3.0).requires_grad_(true);
  const at::Tensor t = random_normal({shape.rows, shape.cols}, dtype, device, 3.0).requires_grad_(both);
  const at::Tensor y = torch::randint(0, shape.cols, {shape.rows}, torch::TensorOptions(torch::kLong).device(device));
  const auto step = [&] {
    const at::Tensor loss = ours ? fused(op, s, t, y) : composite(op, s, t, y);
    benchmark::DoNotOptimize(both ? torch::autograd::grad({loss}, {s, t}) : torch::autograd::grad({loss}, {s}));
  };
  time_loop(state, cuda, step);
  const int64_t bytes = shape.rows * shape.cols * static_cast<int64_t>(c10::elementSize(dtype));
  state.SetBytesProcessed(state.iterations() * bytes * (both ? 4 : 3));
#if FUSEDKD_WITH_CUDA
  // The issue's memory target: one fwd+bwd allocates at its peak one [R x V] gradient buffer
  // (extra_per_grad 1.0 plus a per-row workspace); the composite's figure is beside it.
  if (cuda) {
    const int64_t extra = fusedkd::testing::cuda_peak_extra_bytes(step);
    state.counters["extra_MB"] = static_cast<double>(extra) / 1e6;
    state.counters["extra_per_grad"] = static_cast<double>(extra) / static_cast<double>(bytes);
  }
#endif
}

void register_all() {
  const bool have_cuda = torch::cuda::is_available();
  const std::vector<Shape> cpu_shapes = {{256, 10}, {8192, 10}, {4096, 1000}, {4096, 32000}};
  const std::vector<Shape> cuda_shapes = {{8192, 10},       {8192, 1000},    {4096, 32000},
                                          {16384, 32000},   {4096, 131072},  {4096, 262144}};
  for (bool cuda : {false, true}) {
    if (cuda && !have_cuda) continue;
    for (const Shape& shape : cuda ? cuda_shapes : cpu_shapes)
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16})
        for (Op op : {Op::KdLossKl, Op::KlDiv, Op::Jsd, Op::SoftMse})
          for (Impl impl : {Impl::Fused, Impl::Composite, Impl::FusedStreaming})
            for (bool both : {false, true}) {
              // The large CPU shape is the target case (kd_loss, kl, float32) alone: 0.5 GB a tensor.
              if (!cuda && shape.cols == 32000 && (op != Op::KdLossKl || dtype != at::kFloat)) continue;
              // The streaming comparison: CUDA, kd_loss, rows beyond the register tiles.
              if (impl == Impl::FusedStreaming && (!cuda || op != Op::KdLossKl || shape.cols <= 4096 || both)) continue;
              // Both gradients: the KL divergences, whose teacher gradient is a sweep of its own; on
              // CUDA up to V = 32,000 (the GPU check's minutes are few).
              if (both && ((op != Op::KdLossKl && op != Op::KlDiv) || (cuda && shape.cols > 32000))) continue;
              const std::string name = std::string(op_name(op)) + (both ? "/fwd+bwd-both/" : "/fwd+bwd/") +
                                       impl_name(impl) + "/" + (cuda ? "cuda" : "cpu") + "/" + c10::toString(dtype) +
                                       "/R" + std::to_string(shape.rows) + "xV" + std::to_string(shape.cols);
              fusedkd::bench::register_case(name, cuda, benchmark::kMillisecond, [=](benchmark::State& state) {
                run_case(state, op, impl, dtype, cuda, shape, both);
              });
            }
  }
}

}  // namespace

int main(int argc, char** argv) { return fusedkd::bench::run_main(argc, argv, register_all); }

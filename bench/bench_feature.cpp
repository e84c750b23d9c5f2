// feature_mse, attention_transfer, projected_feature_mse, similarity_preserving, forward +
// backward (student requires grad; the regressor too for the projection), against the LibTorch
// composites they replace, at CNN shapes. bytes_per_second counts the minimal traffic of
// feature_mse's fused pass (read student and teacher, write the student gradient: 3X, X = the
// student's bytes), and the same 3X for the others, as a common yardstick.
#include <string>
#include <vector>

#include "bench_common.h"
#include "fusedkd/torch.h"

namespace F = torch::nn::functional;

namespace {

using fusedkd::bench::random_normal;
using fusedkd::bench::time_loop;

struct Shape {
  int64_t batch, channels, side;
};

enum class Op { FeatureMse, AttentionTransfer, Projected, SimilarityPreserving };
const char* op_name(Op op) {
  switch (op) {
    case Op::FeatureMse: return "feature_mse";
    case Op::AttentionTransfer: return "attention_transfer";
    case Op::Projected: return "projected_feature_mse";
    case Op::SimilarityPreserving: return "similarity_preserving";
  }
  return "?";
}

at::Tensor attention_map(const at::Tensor& x) {
  return F::normalize(x.pow(2).mean(1).flatten(1), F::NormalizeFuncOptions().dim(1));
}

at::Tensor gram(const at::Tensor& x) {
  const at::Tensor f = x.reshape({x.size(0), -1});
  return F::normalize(torch::mm(f, f.t()), F::NormalizeFuncOptions().dim(1));
}

at::Tensor loss_of(Op op, bool ours, const at::Tensor& s, const at::Tensor& t, const at::Tensor& w) {
  const int64_t n = s.size(0);
  switch (op) {
    case Op::FeatureMse: return ours ? fusedkd::feature_mse(s, t) : F::mse_loss(s, t);
    case Op::AttentionTransfer:
      return ours ? fusedkd::attention_transfer(s, t) : (attention_map(s) - attention_map(t)).pow(2).mean();
    case Op::Projected:
      return ours ? fusedkd::projected_feature_mse(s, w, std::nullopt, t)
                  : F::mse_loss(F::conv2d(s, w.reshape({w.size(0), w.size(1), 1, 1})), t);
    case Op::SimilarityPreserving:
      return ours ? fusedkd::similarity_preserving(s, t) : (gram(s) - gram(t)).pow(2).sum() / double(n * n);
  }
  return {};
}

void run_case(benchmark::State& state, Op op, bool ours, at::ScalarType dtype, bool cuda, Shape shape) {
  const auto device = cuda ? torch::kCUDA : torch::kCPU;
  torch::manual_seed(0);
  const int64_t teacher_channels = op == Op::Projected ? shape.channels * 2 : shape.channels;
  const at::Tensor s =
      random_normal({shape.batch, shape.channels, shape.side, shape.side}, dtype, device).requires_grad_(true);
  const at::Tensor t = random_normal({shape.batch, teacher_channels, shape.side, shape.side}, dtype, device);
  const at::Tensor w = random_normal({teacher_channels, shape.channels}, dtype, device, 0.1).requires_grad_(true);
  std::vector<at::Tensor> inputs = {s};
  if (op == Op::Projected) inputs.push_back(w);
  time_loop(state, cuda, [&] {
    const at::Tensor loss = loss_of(op, ours, s, t, w);
    benchmark::DoNotOptimize(torch::autograd::grad({loss}, inputs)[0]);
  });
  state.SetBytesProcessed(state.iterations() * s.numel() * static_cast<int64_t>(c10::elementSize(dtype)) * 3);
}

void register_all() {
  const bool have_cuda = torch::cuda::is_available();
  const std::vector<Shape> shapes = {{128, 64, 56}, {128, 128, 28}, {128, 256, 14}, {128, 512, 7}};
  for (bool cuda : {false, true}) {
    if (cuda && !have_cuda) continue;
    for (const Shape& shape : shapes)
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16})
        for (Op op : {Op::FeatureMse, Op::AttentionTransfer, Op::Projected, Op::SimilarityPreserving})
          for (bool ours : {true, false}) {
            // The CPU runs take float32 and two shapes: each input is 100 MB at the first one.
            if (!cuda && (dtype != at::kFloat || (shape.side != 56 && shape.side != 7))) continue;
            const std::string name = std::string(op_name(op)) + "/fwd+bwd/" + (ours ? "fusedkd" : "composite") + "/" +
                                     (cuda ? "cuda" : "cpu") + "/" + c10::toString(dtype) + "/N" +
                                     std::to_string(shape.batch) + "xC" + std::to_string(shape.channels) + "xHW" +
                                     std::to_string(shape.side);
            fusedkd::bench::register_case(name, cuda, benchmark::kMillisecond, [=](benchmark::State& state) {
              run_case(state, op, ours, dtype, cuda, shape);
            });
          }
  }
}

}  // namespace

int main(int argc, char** argv) { return fusedkd::bench::run_main(argc, argv, register_all); }

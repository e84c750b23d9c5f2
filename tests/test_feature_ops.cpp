// feature_mse, attention_transfer, projected_feature_mse, similarity_preserving against LibTorch
// composites (mse_loss, F.normalize(x.abs().pow(p).mean(1).flatten(1)), conv2d/conv3d with a 1x1
// kernel, mm) with autograd: losses and gradients for every reduction, dtype (also mixed), layout
// (channels-last, non-contiguous), 3-d to 5-d maps, N = 1, odd sizes; grad_output scaling;
// retain_graph; the bad inputs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "fusedkd/torch.h"
#include "op_test_support.h"

namespace F = torch::nn::functional;

namespace {

using fusedkd::testing::expect_error;
using fusedkd::testing::missing_device;
using fusedkd::testing::relative_error;

double tolerance(at::ScalarType type) { return type == at::kDouble ? 1e-10 : type == at::kFloat ? 1e-5 : 2e-2; }

at::Tensor features(at::IntArrayRef shape, at::ScalarType type, const at::Device& device, int seed) {
  torch::manual_seed(seed);
  return torch::randn(shape, torch::kDouble).to(type).to(device);
}

// The composite, in float64 on the same values, with the reduction as the spec defines it.
at::Tensor attention_map(const at::Tensor& x, double p) {
  return F::normalize(x.abs().pow(p).mean(1).reshape({x.size(0), -1}), F::NormalizeFuncOptions().dim(1));
}

at::Tensor attention_composite(const at::Tensor& s, const at::Tensor& t, double p, const std::string& reduction) {
  const at::Tensor d = (attention_map(s, p) - attention_map(t, p)).pow(2);
  if (reduction == "mean") return d.mean();
  if (reduction == "sum") return d.sum();
  if (reduction == "batchmean") return d.sum() / s.size(0);
  return d.sum(1);
}

at::Tensor similarity_composite(const at::Tensor& s, const at::Tensor& t) {
  auto g = [](const at::Tensor& x) {
    const at::Tensor f = x.reshape({x.size(0), -1});
    return F::normalize(torch::mm(f, f.t()), F::NormalizeFuncOptions().dim(1));
  };
  return (g(s) - g(t)).pow(2).sum() / static_cast<double>(s.size(0) * s.size(0));
}

at::Tensor projection_composite(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  // A 1x1 convolution on any number of spatial dims: the regressor is a channel mix.
  at::Tensor y = torch::einsum("oc,nc...->no...", {w, x});
  if (b.defined()) {
    std::vector<int64_t> shape(x.dim(), 1);
    shape[1] = b.size(0);
    y = y + b.reshape(shape);
  }
  return y;
}

at::Tensor reduce_mse(const at::Tensor& a, const at::Tensor& b, const std::string& reduction) {
  if (reduction == "mean") return F::mse_loss(a, b, F::MSELossFuncOptions().reduction(torch::kMean));
  if (reduction == "sum") return F::mse_loss(a, b, F::MSELossFuncOptions().reduction(torch::kSum));
  return F::mse_loss(a, b, F::MSELossFuncOptions().reduction(torch::kNone));
}

// Checks value and gradients of `op` against `composite` (run in float64 on the same values),
// with a random grad_output of the loss's shape.
void check_against(const std::vector<at::Tensor>& inputs,
                   const std::function<at::Tensor(const std::vector<at::Tensor>&)>& op,
                   const std::function<at::Tensor(const std::vector<at::Tensor>&)>& composite, double tol,
                   const std::string& where) {
  std::vector<at::Tensor> ours, refs;
  for (const at::Tensor& x : inputs) {
    ours.push_back(x.detach().requires_grad_(true));
    refs.push_back(x.detach().to(at::kDouble).requires_grad_(true));
  }
  const at::Tensor out = op(ours);
  const at::Tensor ref = composite(refs);
  EXPECT_EQ(out.sizes(), ref.sizes()) << where;
  EXPECT_LT(relative_error(out, ref), tol) << where;
  torch::manual_seed(99);
  const at::Tensor weight = torch::randn(ref.sizes(), torch::kDouble);
  const auto grads = torch::autograd::grad({(out.to(at::kDouble) * weight.to(out.device())).sum()}, ours);
  const auto ref_grads = torch::autograd::grad({(ref * weight.to(ref.device())).sum()}, refs);
  for (std::size_t i = 0; i < grads.size(); ++i) {
    EXPECT_EQ(grads[i].scalar_type(), inputs[i].scalar_type()) << where << " input " << i;
    EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << where << " input " << i;
    EXPECT_LT(relative_error(grads[i], ref_grads[i]), tol) << where << " gradient of input " << i;
  }
}

class FeatureOps : public ::testing::TestWithParam<std::string> {
 protected:
  at::Device device() const { return at::Device(GetParam()); }
  void SetUp() override {
    if (const char* why = missing_device(device())) GTEST_SKIP() << why;
  }
};

TEST_P(FeatureOps, FeatureMseMatchesMseLoss) {
  const std::vector<std::vector<int64_t>> shapes = {{1}, {7, 3}, {2, 3, 5}, {1, 5, 7, 9}, {3, 4, 5, 6, 2}, {2, 1031}};
  for (const auto& shape : shapes) {
    for (const auto type : {at::kDouble, at::kFloat, at::kBFloat16, at::kHalf}) {
      for (const std::string reduction : {"mean", "sum", "none"}) {
        const at::Tensor s = features(shape, type, device(), 1), t = features(shape, type, device(), 2);
        check_against({s, t}, [&](const auto& v) { return fusedkd::feature_mse(v[0], v[1], reduction); },
                      [&](const auto& v) { return reduce_mse(v[0], v[1], reduction); }, tolerance(type),
                      std::string(c10::toString(type)) + " " + reduction + " " + c10::str(at::IntArrayRef(shape)));
      }
    }
  }
}

TEST_P(FeatureOps, FeatureMseLayoutsAndMixedDtypes) {
  const at::Tensor base = features({4, 6, 5, 7}, at::kFloat, device(), 3);
  const at::Tensor teacher = features({4, 6, 5, 7}, at::kFloat, device(), 4);
  const std::vector<std::pair<at::Tensor, at::Tensor>> cases = {
      {base.contiguous(at::MemoryFormat::ChannelsLast), teacher.contiguous(at::MemoryFormat::ChannelsLast)},
      {base.contiguous(at::MemoryFormat::ChannelsLast), teacher},  // layouts differ: teacher copied
      {base.transpose(1, 3), teacher.transpose(1, 3)},             // dense, permuted
      {base.slice(3, 1, 6), teacher.slice(3, 0, 5)},               // not dense
      {base, teacher.to(at::kBFloat16)},                           // fp32 student, bf16 teacher
      {base.to(at::kHalf), teacher.to(at::kBFloat16)},
      {base.to(at::kDouble), teacher},
      {base, teacher.to(at::kDouble)},  // promoted on CUDA, never demoted: a float64 loss
      {base.to(at::kBFloat16), teacher.to(at::kDouble)}};
  for (std::size_t i = 0; i < cases.size(); ++i) {
    for (const std::string reduction : {"mean", "none"}) {
      const auto& [s, t] = cases[i];
      const double tol = std::max(tolerance(s.scalar_type()), tolerance(t.scalar_type()));
      check_against({s, t}, [&](const auto& v) { return fusedkd::feature_mse(v[0], v[1], reduction); },
                    [&](const auto& v) { return reduce_mse(v[0], v[1], reduction); }, tol,
                    "case " + std::to_string(i) + " " + reduction);
    }
  }
  // The loss dtype is the spec's for every pair (float64 when either input is float64).
  for (const auto& [s, t] : cases) {
    const bool is_double = s.scalar_type() == at::kDouble || t.scalar_type() == at::kDouble;
    EXPECT_EQ(fusedkd::feature_mse(s, t).scalar_type(), is_double ? at::kDouble : at::kFloat);
  }
  // "none" keeps the student's layout.
  const at::Tensor s = base.contiguous(at::MemoryFormat::ChannelsLast);
  EXPECT_TRUE(fusedkd::feature_mse(s, teacher, "none").is_contiguous(at::MemoryFormat::ChannelsLast));
}

TEST_P(FeatureOps, AttentionTransferMatchesComposite) {
  struct Case {
    std::vector<int64_t> s, t;
  };
  const std::vector<Case> cases = {{{1, 1, 1}, {1, 1, 1}},           {{2, 3, 7}, {2, 5, 7}},
                                   {{3, 6, 5, 7}, {3, 4, 5, 7}},     {{1, 16, 7, 7}, {1, 32, 7, 7}},
                                   {{2, 3, 3, 4, 5}, {2, 2, 3, 4, 5}}, {{4, 7}, {4, 3}}};
  for (const Case& c : cases) {
    for (const auto type : {at::kDouble, at::kFloat, at::kBFloat16, at::kHalf}) {
      for (const double p : {2.0, 1.0, 3.0}) {
        for (const std::string reduction : {"mean", "sum", "batchmean", "none"}) {
          const at::Tensor s = features(c.s, type, device(), 5), t = features(c.t, type, device(), 6);
          check_against({s, t}, [&](const auto& v) { return fusedkd::attention_transfer(v[0], v[1], p, reduction); },
                        [&](const auto& v) { return attention_composite(v[0], v[1], p, reduction); }, tolerance(type),
                        std::string(c10::toString(type)) + " p " + std::to_string(p) + " " + reduction + " " +
                            c10::str(at::IntArrayRef(c.s)));
        }
      }
    }
  }
}

TEST_P(FeatureOps, AttentionTransferLayouts) {
  const at::Tensor s = features({3, 8, 6, 5}, at::kFloat, device(), 7);
  const at::Tensor t = features({3, 4, 6, 5}, at::kFloat, device(), 8);
  const std::vector<std::pair<at::Tensor, at::Tensor>> cases = {
      {s.contiguous(at::MemoryFormat::ChannelsLast), t},
      {s, t.contiguous(at::MemoryFormat::ChannelsLast)},
      {s.slice(1, 0, 8, 2), t.transpose(2, 3).contiguous().transpose(2, 3)},
      {s.to(at::kBFloat16), t.to(at::kDouble)},
      {s.to(at::kHalf).contiguous(at::MemoryFormat::ChannelsLast), t.to(at::kDouble)}};
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& [a, b] = cases[i];
    check_against({a, b}, [&](const auto& v) { return fusedkd::attention_transfer(v[0], v[1], 2.0, "mean"); },
                  [&](const auto& v) { return attention_composite(v[0], v[1], 2.0, "mean"); },
                  std::max(tolerance(a.scalar_type()), tolerance(b.scalar_type())), "case " + std::to_string(i));
  }
}

TEST_P(FeatureOps, ProjectedFeatureMseMatchesConvComposite) {
  struct Case {
    std::vector<int64_t> x;
    int64_t ct;
  };
  const std::vector<Case> cases = {{{1, 1, 1}, 1}, {{2, 3, 7}, 5}, {{3, 6, 5, 7}, 4}, {{2, 5, 3, 4, 3}, 7}, {{4, 9}, 2}};
  for (const Case& c : cases) {
    for (const auto type : {at::kDouble, at::kFloat, at::kBFloat16}) {
      for (const bool with_bias : {true, false}) {
        for (const std::string reduction : {"mean", "sum", "none"}) {
          const at::Tensor x = features(c.x, type, device(), 9);
          const at::Tensor w = features({c.ct, c.x[1]}, type, device(), 10) * 0.3;
          const at::Tensor b = features({c.ct}, type, device(), 11);
          std::vector<int64_t> ts = c.x;
          ts[1] = c.ct;
          const at::Tensor t = features(ts, type, device(), 12);
          std::vector<at::Tensor> inputs = {x, w, t};
          if (with_bias) inputs.push_back(b);
          check_against(
              inputs,
              [&](const auto& v) {
                return fusedkd::projected_feature_mse(v[0], v[1], with_bias ? std::optional<at::Tensor>(v[3]) : std::nullopt,
                                                      v[2], reduction);
              },
              [&](const auto& v) {
                return reduce_mse(projection_composite(v[0], v[1], with_bias ? v[3] : at::Tensor()), v[2], reduction);
              },
              type == at::kBFloat16 ? 3e-2 : tolerance(type),
              std::string(c10::toString(type)) + " bias " + std::to_string(with_bias) + " " + reduction + " " +
                  c10::str(at::IntArrayRef(c.x)));
        }
      }
    }
  }
}

TEST_P(FeatureOps, ProjectedFeatureMseLayoutsAndConvWeight) {
  const at::Tensor x = features({3, 6, 5, 7}, at::kFloat, device(), 13).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = features({4, 6, 1, 1}, at::kFloat, device(), 14);
  const at::Tensor b = features({4}, at::kFloat, device(), 15);
  const at::Tensor t = features({3, 4, 5, 7}, at::kFloat, device(), 16);
  for (const at::Tensor& teacher : {t, t.contiguous(at::MemoryFormat::ChannelsLast), t.to(at::kBFloat16)}) {
    check_against({x, w, b, teacher},
                  [&](const auto& v) { return fusedkd::projected_feature_mse(v[0], v[1], v[2], v[3], "mean"); },
                  [&](const auto& v) { return reduce_mse(F::conv2d(v[0], v[1], F::Conv2dFuncOptions().bias(v[2])), v[3], "mean"); },
                  teacher.scalar_type() == at::kBFloat16 ? 1e-2 : 1e-5, "conv weight, channels-last student");
  }
}

TEST_P(FeatureOps, SimilarityPreservingMatchesMmComposite) {
  struct Case {
    std::vector<int64_t> s, t;
  };
  const std::vector<Case> cases = {{{1, 3}, {1, 2}}, {{5, 7}, {5, 3, 2}}, {{8, 16, 4, 4}, {8, 32, 2, 2}},
                                   {{33, 3, 5}, {33, 6}}};
  for (const Case& c : cases) {
    for (const auto type : {at::kDouble, at::kFloat, at::kBFloat16}) {
      const at::Tensor s = features(c.s, type, device(), 17), t = features(c.t, type, device(), 18);
      check_against({s, t}, [&](const auto& v) { return fusedkd::similarity_preserving(v[0], v[1]); },
                    [&](const auto& v) { return similarity_composite(v[0], v[1]); }, tolerance(type),
                    std::string(c10::toString(type)) + " " + c10::str(at::IntArrayRef(c.s)));
    }
  }
  const at::Tensor s = features({6, 4, 5}, at::kFloat, device(), 19).transpose(1, 2);  // not contiguous
  const at::Tensor t = features({6, 9}, at::kFloat, device(), 20);
  check_against({s, t}, [&](const auto& v) { return fusedkd::similarity_preserving(v[0], v[1]); },
                [&](const auto& v) { return similarity_composite(v[0], v[1]); }, 1e-5, "transposed student");
}

// The float32 GEMMs (similarity_preserving's Gram matrices, projected_feature_mse's regressor)
// stay float32 when the user allows TF32 for matmuls (the setting rides on ATen's cuBLAS handle):
// TF32's 10-bit mantissa would miss the float32 tolerance by two orders of magnitude.
TEST_P(FeatureOps, Float32GemmsIgnoreTf32) {
  struct AllowTf32 {  // restored however the test ends
    bool saved = at::globalContext().allowTF32CuBLAS();
    AllowTf32() { at::globalContext().setAllowTF32CuBLAS(true); }
    ~AllowTf32() { at::globalContext().setAllowTF32CuBLAS(saved); }
  } allow_tf32;
  const at::Tensor s = features({16, 64, 7, 7}, at::kFloat, device(), 30);
  const at::Tensor t = features({16, 32, 7, 7}, at::kFloat, device(), 31);
  check_against({s, t}, [&](const auto& v) { return fusedkd::similarity_preserving(v[0], v[1]); },
                [&](const auto& v) { return similarity_composite(v[0], v[1]); }, 1e-5, "similarity, TF32 allowed");
  const at::Tensor w = features({32, 64}, at::kFloat, device(), 32) * 0.1;
  const at::Tensor b = features({32}, at::kFloat, device(), 33);
  check_against({s, w, t, b}, [&](const auto& v) { return fusedkd::projected_feature_mse(v[0], v[1], v[3], v[2], "mean"); },
                [&](const auto& v) { return reduce_mse(projection_composite(v[0], v[1], v[3]), v[2], "mean"); }, 1e-5,
                "projection, TF32 allowed");
}

TEST_P(FeatureOps, GradOutputScalingAndRetainGraph) {
  const at::Tensor s = features({3, 4, 5, 6}, at::kFloat, device(), 21).requires_grad_(true);
  const at::Tensor t = features({3, 2, 5, 6}, at::kFloat, device(), 22);
  const at::Tensor w = features({2, 4}, at::kFloat, device(), 23).requires_grad_(true);
  const std::vector<std::function<at::Tensor()>> losses = {
      [&] { return fusedkd::feature_mse(s, features({3, 4, 5, 6}, at::kFloat, device(), 24), "mean"); },
      [&] { return fusedkd::attention_transfer(s, t, 2.0, "mean"); },
      [&] { return fusedkd::similarity_preserving(s, t); },
      [&] { return fusedkd::projected_feature_mse(s, w, std::nullopt, t, "mean"); }};
  for (std::size_t i = 0; i < losses.size(); ++i) {
    const at::Tensor loss = losses[i]();
    const at::Tensor once = torch::autograd::grad({loss}, {s}, {}, /*retain_graph=*/true)[0];
    const at::Tensor scaled = torch::autograd::grad({loss * 3.0}, {s}, {}, /*retain_graph=*/true)[0];
    const at::Tensor again = torch::autograd::grad({loss}, {s})[0];
    EXPECT_LT(relative_error(scaled, once * 3.0), 1e-6) << "loss " << i;
    EXPECT_LT(relative_error(again, once), 1e-7) << "loss " << i;
  }
}

TEST_P(FeatureOps, InferenceWritesNoGradient) {
  torch::NoGradGuard no_grad;
  const at::Tensor s = features({2, 3, 4}, at::kFloat, device(), 25).requires_grad_(true);
  const at::Tensor t = features({2, 3, 4}, at::kFloat, device(), 26);
  EXPECT_FALSE(fusedkd::feature_mse(s, t).requires_grad());
  EXPECT_LT(relative_error(fusedkd::attention_transfer(s, t), attention_composite(s.detach(), t, 2.0, "mean")), 1e-5);
  const at::Tensor w = features({5, 3}, at::kFloat, device(), 34).requires_grad_(true);
  const at::Tensor y = features({2, 5, 4}, at::kFloat, device(), 35);
  const at::Tensor loss = fusedkd::projected_feature_mse(s, w, std::nullopt, y, "sum");
  EXPECT_FALSE(loss.requires_grad());
  EXPECT_LT(relative_error(loss, reduce_mse(projection_composite(s.detach(), w.detach(), at::Tensor()), y, "sum")), 1e-5);
}

TEST_P(FeatureOps, EmptyBatch) {
  const at::Tensor s = features({0, 3, 4, 4}, at::kFloat, device(), 27);
  const at::Tensor t = features({0, 2, 4, 4}, at::kFloat, device(), 28);
  EXPECT_TRUE(fusedkd::feature_mse(s, s, "mean").isnan().item<bool>());  // as F.mse_loss
  EXPECT_EQ(fusedkd::feature_mse(s, s, "sum").item<double>(), 0.0);
  EXPECT_EQ(fusedkd::attention_transfer(s, t, 2.0, "sum").item<double>(), 0.0);
  EXPECT_EQ(fusedkd::attention_transfer(s, t, 2.0, "none").numel(), 0);
  EXPECT_TRUE(fusedkd::similarity_preserving(s, t).isnan().item<bool>());  // ||.||^2 / N^2: 0 / 0
  const at::Tensor w = features({2, 3}, at::kFloat, device(), 29);
  EXPECT_EQ(fusedkd::projected_feature_mse(s, w, std::nullopt, t, "sum").item<double>(), 0.0);
}

TEST_P(FeatureOps, BadInputs) {
  const at::Device d = device();
  const at::Tensor s = features({2, 3, 4, 4}, at::kFloat, d, 30);
  const at::Tensor t = features({2, 5, 4, 4}, at::kFloat, d, 31);
  expect_error([&] { fusedkd::feature_mse(s, t); }, {"feature_mse", "same shape"});
  expect_error([&] { fusedkd::feature_mse(s, s, "batchmean"); }, {"feature_mse", "reduction"});
  expect_error([&] { fusedkd::feature_mse(s.to(at::kInt), s); }, {"feature_mse", "student", "float"});
  expect_error([&] { fusedkd::feature_mse(s.sum(), s.sum()); }, {"feature_mse", "student", "at least 1 dims"});
  expect_error([&] { fusedkd::attention_transfer(s, t.slice(2, 0, 3)); }, {"attention_transfer", "spatial"});
  expect_error([&] { fusedkd::attention_transfer(s, t.slice(0, 0, 1)); }, {"attention_transfer", "batch"});
  expect_error([&] { fusedkd::attention_transfer(s, t, 0.0); }, {"attention_transfer", "p must be"});
  expect_error([&] { fusedkd::attention_transfer(s, t, std::nan("")); }, {"attention_transfer", "p must be"});
  expect_error([&] { fusedkd::attention_transfer(s, t, 2.0, "avg"); }, {"attention_transfer", "reduction"});
  expect_error([&] { fusedkd::attention_transfer(s.flatten(), t); }, {"attention_transfer", "at least 2 dims"});
  const at::Tensor w = features({5, 3}, at::kFloat, d, 32);
  expect_error([&] { fusedkd::projected_feature_mse(s, w.t(), std::nullopt, t); }, {"projected_feature_mse", "weight"});
  expect_error([&] { fusedkd::projected_feature_mse(s, w, features({4}, at::kFloat, d, 33), t); },
               {"projected_feature_mse", "bias"});
  expect_error([&] { fusedkd::projected_feature_mse(s, w, std::nullopt, s); }, {"projected_feature_mse", "teacher"});
  expect_error([&] { fusedkd::similarity_preserving(s, t.slice(0, 0, 1)); }, {"similarity_preserving", "batch"});
  if (d.is_cpu() && torch::cuda::is_available()) {
    expect_error([&] { fusedkd::feature_mse(s, s.cuda()); }, {"feature_mse", "same device"});
  }
  if (d.is_cuda()) {
    expect_error([&] { fusedkd::attention_transfer(s, t.cpu()); }, {"attention_transfer", "same device"});
    expect_error([&] { fusedkd::projected_feature_mse(s, w.cpu(), std::nullopt, t); },
                 {"projected_feature_mse", "same device"});
  }
}

INSTANTIATE_TEST_SUITE_P(All, FeatureOps, ::testing::Values("cpu", "cuda"),
                         [](const auto& info) { return info.param; });

}  // namespace

// kl_div, jsd, soft_mse, kd_loss against LibTorch composites (log_softmax, kl_div(log_target),
// mse_loss, cross_entropy) with autograd: losses and gradients for every reduction, divergence,
// beta, temperature (the spec's extremes too), dtype (also mixed), shape and layout; empty batches
// and an LLM-sized vocabulary; the seed's two examples; kd_loss's ignore_index and T^2 scale.
// The autograd contract, memory, masked logits, every dtype pair, bad inputs and the CUDA path's
// host dtype rule: test_soft_target_op_autograd_dtypes_errors.cpp.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "fusedkd/torch.h"
#include "soft_target_op_test_support.h"

namespace F = torch::nn::functional;

namespace {

using fusedkd::testing::composite_rows;
using fusedkd::testing::logits;
using fusedkd::testing::reduce;
using fusedkd::testing::SoftTargetOps;

TEST_P(SoftTargetOps, KlDivMatchesCompositeForEveryReductionAndDirection) {
  int seed = 0;
  for (const std::string reduction : {"none", "sum", "mean", "batchmean"})
    for (bool reverse : {false, true})
      for (double T : {0.5, 1.0, 4.0, 20.0}) {
        const at::Tensor s = logits({6, 37}, at::kDouble, device(), ++seed);
        const at::Tensor t = logits({6, 37}, at::kDouble, device(), ++seed);
        compare(s, t, seed % 2,
                [&](const at::Tensor& a, const at::Tensor& b) { return fusedkd::kl_div(a, b, T, reduction, reverse); },
                [&](const at::Tensor& a, const at::Tensor& b) {
                  return reduce(composite_rows(a, b, T, reverse ? "reverse_kl" : "kl", 0), reduction, 37);
                },
                "kl_div " + reduction + (reverse ? " reverse" : "") + " T=" + std::to_string(T));
      }
}

// The spec's temperature range: from 0.05 (logits / T up to ~250: one-hot softmaxes) to 100
// (nearly uniform ones), float32 against float64 composites, every divergence, short rows (the
// CPU's lane layout), medium and long ones: loss and gradients finite, and accurate to float32
// resolution at the scale of the math. Errors are absolute here: at T = 0.05 saturated rows have
// gradients of 1e-16 in float64 (float32 gives ~1e-8, noise on a scale of 1/T), and at T = 100
// the losses are ~1e-3, differences of logarithms of order 10.
TEST_P(SoftTargetOps, TemperatureExtremesStayFiniteAndAccurate) {
  const int64_t R = 5;
  int seed = 100;
  for (double T : {0.05, 100.0})
    for (const std::string divergence : {"kl", "reverse_kl", "jsd", "mse"})
      for (int64_t V : {10, 300, 5000}) {
        const std::string what = divergence + " T=" + std::to_string(T) + " V=" + std::to_string(V);
        const at::Tensor s0 = logits({R, V}, at::kFloat, device(), ++seed);
        const at::Tensor t0 = logits({R, V}, at::kFloat, device(), ++seed);
        const std::string reduction = divergence == "mse" ? "mean" : "batchmean";
        auto ours = [&](const at::Tensor& a, const at::Tensor& b) {
          if (divergence == "kl" || divergence == "reverse_kl")
            return fusedkd::kl_div(a, b, T, reduction, divergence == "reverse_kl");
          if (divergence == "jsd") return fusedkd::jsd(a, b, T, 0.5, reduction);
          return fusedkd::soft_mse(a, b, T, reduction);
        };
        const at::Tensor s = s0.clone().requires_grad_(true), t = t0.clone().requires_grad_(true);
        const at::Tensor s64 = s0.cpu().to(at::kDouble).requires_grad_(true);
        const at::Tensor t64 = t0.cpu().to(at::kDouble).requires_grad_(true);
        const at::Tensor loss = ours(s, t);
        const at::Tensor rows = composite_rows(s64, t64, T, divergence, 0.5);
        const at::Tensor ref = reduce(rows, reduction, V);
        const auto grads = torch::autograd::grad({loss}, {s, t});
        const auto grads64 = torch::autograd::grad({ref}, {s64, t64});
        const double l = loss.item<double>(), r = ref.item<double>();
        ASSERT_TRUE(std::isfinite(l)) << what;
        EXPECT_LT(std::abs(l - r), 1e-5 * std::max(1.0, std::abs(r))) << what << " loss " << l << " ref " << r;
        // Measured against the largest gradient element, and at least (row weight) / T times the
        // largest row divergence (the size of the log-ratios the gradients take differences of).
        const double weight = reduction == "mean" ? 1.0 / (R * V) : 1.0 / R;
        const double log_ratio = std::max(1.0, rows.abs().max().item<double>());
        for (int i = 0; i < 2; ++i) {
          const at::Tensor g = grads[i].cpu().to(at::kDouble);
          ASSERT_TRUE(g.isfinite().all().item<bool>()) << what;
          const double scale = std::max(grads64[i].abs().max().item<double>(), weight / T * log_ratio);
          EXPECT_LT((g - grads64[i]).abs().max().item<double>(), 1e-5 * scale)
              << what << (i == 0 ? " student" : " teacher") << " gradient";
        }
      }
}

TEST_P(SoftTargetOps, JsdMatchesCompositeForEveryBeta) {
  int seed = 100;
  for (double beta : {0.0, 0.1, 0.5, 0.9, 1.0})
    for (const std::string reduction : {"none", "sum", "batchmean"}) {
      const double T = seed % 2 ? 2.0 : 0.7;
      const at::Tensor s = logits({5, 129}, at::kFloat, device(), ++seed);
      const at::Tensor t = logits({5, 129}, at::kFloat, device(), ++seed);
      compare(s, t, true,
              [&](const at::Tensor& a, const at::Tensor& b) { return fusedkd::jsd(a, b, T, beta, reduction); },
              [&](const at::Tensor& a, const at::Tensor& b) {
                return reduce(composite_rows(a, b, T, "jsd", beta), reduction, 129);
              },
              "jsd beta=" + std::to_string(beta) + " " + reduction);
    }
}

TEST_P(SoftTargetOps, SoftMseMatchesMseLossOnSoftmaxes) {
  int seed = 200;
  for (const std::string reduction : {"mean", "sum", "none", "batchmean"}) {
    const at::Tensor s = logits({7, 10}, at::kFloat, device(), ++seed);
    const at::Tensor t = logits({7, 10}, at::kFloat, device(), ++seed);
    compare(s, t, true,
            [&](const at::Tensor& a, const at::Tensor& b) { return fusedkd::soft_mse(a, b, 5.0, reduction); },
            [&](const at::Tensor& a, const at::Tensor& b) {
              if (reduction == "mean") return F::mse_loss(torch::softmax(a / 5.0, -1), torch::softmax(b / 5.0, -1));
              return reduce(composite_rows(a, b, 5.0, "mse", 0), reduction, 10);
            },
            "soft_mse " + reduction);
  }
}

TEST_P(SoftTargetOps, DtypesMixedDtypesShapesAndLayouts) {
  const std::vector<std::pair<at::ScalarType, at::ScalarType>> pairs = {
      {at::kFloat, at::kFloat},   {at::kBFloat16, at::kBFloat16}, {at::kHalf, at::kHalf},
      {at::kFloat, at::kBFloat16}, {at::kBFloat16, at::kFloat},   {at::kHalf, at::kBFloat16},
      {at::kDouble, at::kFloat}};
  const std::vector<std::vector<int64_t>> shapes = {{1, 1}, {3, 7}, {2, 3, 1031}, {4, 5000}, {2, 20000}};
  int seed = 300;
  for (const auto& [ts, tt] : pairs)
    for (const auto& shape : shapes) {
      const at::Tensor s = logits(shape, ts, device(), ++seed);
      const at::Tensor t = logits(shape, tt, device(), ++seed);
      const int64_t V = shape.back();
      compare(s, t, seed % 3 == 0,
              [&](const at::Tensor& a, const at::Tensor& b) { return fusedkd::kl_div(a, b, 2.0, "batchmean"); },
              [&](const at::Tensor& a, const at::Tensor& b) { return reduce(composite_rows(a, b, 2.0, "kl", 0), "batchmean", V); },
              std::string("kl_div ") + c10::toString(ts) + "/" + c10::toString(tt) + " V=" + std::to_string(V));
    }
  // Non-contiguous student and teacher (strided rows, transposed leading dims).
  const at::Tensor base_s = logits({6, 4, 50}, at::kFloat, device(), 400);
  const at::Tensor base_t = logits({4, 6, 50}, at::kFloat, device(), 401);
  const at::Tensor s = base_s.narrow(2, 1, 45);
  const at::Tensor t = base_t.transpose(0, 1).narrow(2, 3, 45);
  compare(s, t, true,
          [&](const at::Tensor& a, const at::Tensor& b) { return fusedkd::jsd(a, b, 1.5, 0.3, "none"); },
          [&](const at::Tensor& a, const at::Tensor& b) { return composite_rows(a, b, 1.5, "jsd", 0.3); },
          "non-contiguous");
  EXPECT_TRUE(torch::equal(fusedkd::kl_div(s, t, 1.5, "none"), fusedkd::kl_div(s.contiguous(), t.contiguous(), 1.5, "none")));
}

TEST_P(SoftTargetOps, EmptyBatchesAndLongRows) {
  // R = 0: "sum" is 0, "mean" and "batchmean" are 0 / 0 = NaN (as torch's), "none" gives an empty
  // tensor, gradients are empty; kd_loss's n = 0 is 0 (the spec's rule).
  for (const std::string reduction : {"none", "sum", "mean", "batchmean"}) {
    const at::Tensor s = torch::zeros({0, 7}, torch::TensorOptions().device(device())).requires_grad_(true);
    const at::Tensor t = torch::zeros({0, 7}, torch::TensorOptions().device(device()));
    const at::Tensor loss = fusedkd::kl_div(s, t, 2.0, reduction);
    EXPECT_EQ(loss.numel(), reduction == "none" ? 0 : 1) << reduction;
    if (reduction == "sum") EXPECT_EQ(loss.item<float>(), 0.0f) << reduction;
    if (reduction == "mean" || reduction == "batchmean") EXPECT_TRUE(std::isnan(loss.item<float>())) << reduction;
    EXPECT_EQ(torch::autograd::grad({loss.sum()}, {s})[0].sizes(), s.sizes());
  }
  const at::Tensor s0 = torch::zeros({2, 0, 5}, torch::TensorOptions().device(device()));
  EXPECT_EQ(fusedkd::kd_loss(s0, s0, torch::zeros({2, 0}, torch::kLong).to(device()), 1.0, 1.0, 1.0).item<float>(), 0.0f);
  // An LLM-sized vocabulary at small R.
  const int64_t V = 131072;
  const at::Tensor s = logits({2, V}, at::kFloat, device(), 950);
  const at::Tensor t = logits({2, V}, at::kFloat, device(), 951);
  torch::manual_seed(952);
  const at::Tensor y = torch::randint(0, V, {2}, torch::kLong).to(device());
  for (const std::string divergence : {"kl", "jsd"}) {
    compare(s, t, true,
            [&](const at::Tensor& a, const at::Tensor& b) { return fusedkd::kd_loss(a, b, y, 4.0, 0.5, 1.0, divergence); },
            [&](const at::Tensor& a, const at::Tensor& b) {
              return F::cross_entropy(a, y) + 0.5 * composite_rows(a, b, 4.0, divergence, 0.5).mean();
            },
            "kd_loss V=131072 " + divergence);
  }
}

// The seed's examples 1 and 2, written as in the seed (nn.MSELoss / nn.KLDivLoss(batchmean)).
TEST_P(SoftTargetOps, SeedExamplesAreKdLoss) {
  const at::Tensor s = logits({32, 10}, at::kFloat, device(), 500);
  const at::Tensor t = logits({32, 10}, at::kFloat, device(), 501);
  torch::manual_seed(502);
  const at::Tensor y = torch::randint(0, 10, {32}, torch::kLong).to(device());
  const double alpha = 0.7;
  compare(s, t, false,
          [&](const at::Tensor& a, const at::Tensor& b) {
            return fusedkd::kd_loss(a, b, y, 5.0, alpha, 1.0, "mse");
          },
          [&](const at::Tensor& a, const at::Tensor& b) {
            const at::Tensor soft_targets = torch::softmax(b.detach() / 5.0, 1);
            return F::cross_entropy(a, y) + alpha * F::mse_loss(torch::softmax(a / 5.0, 1), soft_targets);
          },
          "seed example 1");
  compare(s, t, false,
          [&](const at::Tensor& a, const at::Tensor& b) {
            return fusedkd::kd_loss(a, b, y, 10.0, alpha, 1.0, "kl");
          },
          [&](const at::Tensor& a, const at::Tensor& b) {
            const at::Tensor soft_targets = torch::softmax(b.detach() / 10.0, 1);
            return F::cross_entropy(a, y) +
                   alpha * F::kl_div(torch::log_softmax(a / 10.0, 1), soft_targets,
                                     F::KLDivFuncOptions().reduction(torch::kBatchMean));
          },
          "seed example 2");
}

TEST_P(SoftTargetOps, KdLossDivergencesIgnoreIndexAndT2Scale) {
  int seed = 600;
  for (const std::string divergence : {"kl", "reverse_kl", "jsd", "mse"})
    for (bool t2 : {false, true}) {
      const at::Tensor s = logits({3, 4, 33}, at::kFloat, device(), ++seed);
      const at::Tensor t = logits({3, 4, 33}, at::kFloat, device(), ++seed);
      torch::manual_seed(seed);
      at::Tensor y = torch::randint(0, 33, {3, 4}, torch::kLong);
      y.index_put_({0, 1}, -1);
      y.index_put_({2, 3}, -1);
      y = y.to(torch::kInt).to(device());  // int32 labels are accepted
      const double T = 3.0, sw = 0.6, hw = 0.4, beta = 0.25;
      compare(s, t, true,
              [&](const at::Tensor& a, const at::Tensor& b) {
                return fusedkd::kd_loss(a, b, y, T, sw, hw, divergence, beta, /*ignore_index=*/-1, t2);
              },
              [&](const at::Tensor& a, const at::Tensor& b) {
                const at::Tensor valid = (y != -1).flatten();
                const at::Tensor a2 = a.reshape({-1, 33}).index({valid});
                const at::Tensor b2 = b.reshape({-1, 33}).index({valid});
                const at::Tensor y2 = y.flatten().index({valid}).to(at::kLong);
                const double n = static_cast<double>(a2.size(0));
                at::Tensor soft = composite_rows(a2, b2, T, divergence, beta).sum() / n;
                if (divergence == "mse") soft = soft / 33.0;
                return hw * F::cross_entropy(a2, y2) + sw * (t2 ? T * T : 1.0) * soft;
              },
              "kd_loss " + divergence + (t2 ? " t2" : ""));
    }
}

INSTANTIATE_TEST_SUITE_P(All, SoftTargetOps, ::testing::Values(std::string("cpu"), std::string("cuda")),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace

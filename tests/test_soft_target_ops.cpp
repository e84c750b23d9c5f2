// kl_div, jsd, soft_mse, kd_loss against LibTorch composites (log_softmax, kl_div(log_target),
// mse_loss, cross_entropy) with autograd: losses and gradients for every reduction, divergence,
// beta, temperature, dtype (also mixed), shape and layout; the seed's two examples; ignore_index;
// grad_output scaling; retain_graph; masked logits; every bad input the spec lists.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common.h"
#include "cuda_memory.h"
#include "fusedkd/build_config.h"
#include "fusedkd/torch.h"
#include "op_test_support.h"
#include "ops.h"

namespace F = torch::nn::functional;

namespace {

using fusedkd::testing::expect_error;
using fusedkd::testing::missing_device;
using fusedkd::testing::relative_error;

double tolerance(at::ScalarType a, at::ScalarType b = at::kDouble) {
  auto tol = [](at::ScalarType t) { return t == at::kDouble ? 1e-10 : t == at::kFloat ? 1e-5 : 1e-2; };
  return std::max(tol(a), b == at::kDouble ? 0.0 : tol(b));
}

at::Tensor logits(at::IntArrayRef shape, at::ScalarType type, const at::Device& device, int seed, double scale = 3.0) {
  torch::manual_seed(seed);
  return (torch::randn(shape, torch::kDouble) * scale).to(type).to(device);
}

// Per-row divergences in float64 from the composites, the way a PyTorch user writes them.
at::Tensor composite_rows(const at::Tensor& s, const at::Tensor& t, double T, const std::string& divergence,
                          double beta) {
  const at::Tensor lq = torch::log_softmax(s / T, -1);
  const at::Tensor lp = torch::log_softmax(t / T, -1);
  auto kl_rows = [](const at::Tensor& target_log, const at::Tensor& input_log) {
    return F::kl_div(input_log, target_log, F::KLDivFuncOptions().reduction(torch::kNone).log_target(true)).sum(-1);
  };
  if (divergence == "kl") return kl_rows(lp, lq);
  if (divergence == "reverse_kl") return kl_rows(lq, lp);
  if (divergence == "mse") return (lq.exp() - lp.exp()).pow(2).sum(-1);
  if (beta == 0.0) return kl_rows(lp, lq);
  if (beta == 1.0) return kl_rows(lq, lp);
  const at::Tensor lm = torch::logsumexp(torch::stack({lp + std::log(beta), lq + std::log(1 - beta)}), 0);
  return beta * kl_rows(lp, lm) + (1 - beta) * kl_rows(lq, lm);
}

at::Tensor reduce(const at::Tensor& rows, const std::string& reduction, int64_t cols) {
  if (reduction == "none") return rows;
  if (reduction == "sum") return rows.sum();
  if (reduction == "mean") return rows.sum() / (rows.numel() * cols);
  return rows.sum() / rows.numel();  // batchmean
}

class SoftTargetOps : public ::testing::TestWithParam<std::string> {
 protected:
  at::Device device() const { return at::Device(GetParam()); }
  void SetUp() override {
    if (const char* why = missing_device(device())) GTEST_SKIP() << why;
  }
  // Loss and gradients of `ours` against `reference`, both functions of (s, t) leaves.
  template <typename Ours, typename Ref>
  void compare(const at::Tensor& s0, const at::Tensor& t0, bool teacher_grad, Ours&& ours, Ref&& reference,
               const std::string& what) {
    const at::Tensor s = s0.detach().clone().requires_grad_(true);
    const at::Tensor t = t0.detach().clone().requires_grad_(teacher_grad);
    const at::Tensor loss = ours(s, t);
    const bool is_double = s0.scalar_type() == at::kDouble || t0.scalar_type() == at::kDouble;
    EXPECT_EQ(loss.scalar_type(), is_double ? at::kDouble : at::kFloat) << what;
    const at::Tensor s64 = s0.detach().to(at::kDouble).requires_grad_(true);
    const at::Tensor t64 = t0.detach().to(at::kDouble).requires_grad_(teacher_grad);
    const at::Tensor ref = reference(s64, t64);
    ASSERT_EQ(loss.sizes(), ref.sizes()) << what;
    const double tol = tolerance(s0.scalar_type(), t0.scalar_type());
    EXPECT_LT(relative_error(loss, ref), tol) << what << " loss " << loss << " ref " << ref;
    const at::Tensor upstream = torch::randn(loss.sizes(), torch::kDouble);
    std::vector<at::Tensor> inputs = {s};
    std::vector<at::Tensor> inputs64 = {s64};
    if (teacher_grad) {
      inputs.push_back(t);
      inputs64.push_back(t64);
    }
    const auto grads = torch::autograd::grad({loss}, inputs, {upstream.to(loss.dtype()).to(loss.device())});
    const auto grads64 = torch::autograd::grad({ref}, inputs64, {upstream});
    for (size_t i = 0; i < grads.size(); ++i) {
      EXPECT_EQ(grads[i].scalar_type(), inputs[i].scalar_type()) << what;
      EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << what;
      EXPECT_LT(relative_error(grads[i], grads64[i]), tol) << what << (i == 0 ? " student" : " teacher") << " gradient";
    }
  }
};

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
  // R = 0: totals are 0, "none" gives an empty tensor, gradients are empty.
  for (const std::string reduction : {"none", "sum", "mean", "batchmean"}) {
    const at::Tensor s = torch::zeros({0, 7}, torch::TensorOptions().device(device())).requires_grad_(true);
    const at::Tensor t = torch::zeros({0, 7}, torch::TensorOptions().device(device()));
    const at::Tensor loss = fusedkd::kl_div(s, t, 2.0, reduction);
    EXPECT_EQ(loss.numel(), reduction == "none" ? 0 : 1) << reduction;
    if (reduction != "none") EXPECT_EQ(loss.item<float>(), 0.0f) << reduction;
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

TEST_P(SoftTargetOps, KdLossWithEveryRowIgnoredIsZeroWithZeroGradients) {
  const at::Tensor s = logits({4, 9}, at::kFloat, device(), 700).requires_grad_(true);
  const at::Tensor t = logits({4, 9}, at::kFloat, device(), 701).requires_grad_(true);
  const at::Tensor y = torch::full({4}, -100, torch::kLong).to(device());
  const at::Tensor loss = fusedkd::kd_loss(s, t, y, 2.0, 1.0, 1.0, "jsd");
  EXPECT_EQ(loss.item<float>(), 0.0f);
  loss.backward();
  EXPECT_TRUE((s.grad() == 0).all().item<bool>());
  EXPECT_TRUE((t.grad() == 0).all().item<bool>());
  // Without hard weight the labels still select the rows.
  const at::Tensor soft_only = fusedkd::kd_loss(s.detach(), t.detach(), y);
  EXPECT_EQ(soft_only.item<float>(), 0.0f);
}

TEST_P(SoftTargetOps, GradOutputScalingRetainGraphAndNoGrad) {
  const at::Tensor s = logits({5, 40}, at::kDouble, device(), 800).requires_grad_(true);
  const at::Tensor t = logits({5, 40}, at::kDouble, device(), 801);
  const at::Tensor loss = fusedkd::kl_div(s, t, 2.0);
  const at::Tensor g1 = torch::autograd::grad({loss}, {s}, {torch::ones_like(loss)}, /*retain_graph=*/true)[0].clone();
  const at::Tensor g3 = torch::autograd::grad({loss}, {s}, {torch::full_like(loss, 3.0)}, /*retain_graph=*/true)[0];
  const at::Tensor g1_again = torch::autograd::grad({loss}, {s}, {torch::ones_like(loss)})[0];
  EXPECT_LT(relative_error(g3, g1 * 3), 1e-14);
  EXPECT_TRUE(torch::equal(g1, g1_again));  // a second backward recomputes exactly
  // Per-row weights through reduction="none".
  const at::Tensor rows = fusedkd::kl_div(s, t, 2.0, "none");
  const at::Tensor w = torch::rand({5}, torch::kDouble).to(device());
  const at::Tensor gw = torch::autograd::grad({(rows * w).sum()}, {s})[0];
  const at::Tensor s64 = s.detach().clone().requires_grad_(true);
  const at::Tensor gref = torch::autograd::grad({(composite_rows(s64, t, 2.0, "kl", 0) * w).sum()}, {s64})[0];
  EXPECT_LT(relative_error(gw, gref), 1e-10);
  {
    torch::NoGradGuard no_grad;
    EXPECT_FALSE(fusedkd::kd_loss(s, t).requires_grad());
  }
  // A teacher that does not require grad gets none.
  const at::Tensor ls = fusedkd::kd_loss(s, t);
  EXPECT_TRUE(ls.requires_grad());
}

// The memory contract: a forward that needs no gradient allocates no [R x V] buffer, one that
// needs the student's allocates that one buffer (the backward scales it in place), and the
// teacher's only when the teacher requires grad. Read from the CUDA caching allocator (the CPU
// allocator keeps no such count).
TEST_P(SoftTargetOps, AllocatesAGradientBufferOnlyForInputsThatNeedOne) {
#if FUSEDKD_WITH_CUDA
  if (!device().is_cuda()) GTEST_SKIP() << "allocator statistics are read on CUDA only";
  using fusedkd::testing::cuda_peak_extra_bytes;
  const int64_t rows = 64;
  const int64_t small = 64 * 1024;  // the loss, the per-row workspace, grad_output
  for (int64_t cols : {1000, 40000}) {  // a register-tile row and a long row
    SCOPED_TRACE("V = " + std::to_string(cols));
    const at::Tensor s = logits({rows, cols}, at::kFloat, device(), 900).requires_grad_(true);
    const at::Tensor t = logits({rows, cols}, at::kBFloat16, device(), 901);
    const at::Tensor t_grad = t.clone().requires_grad_(true);
    const at::Tensor y = torch::randint(0, cols, {rows}, torch::TensorOptions(torch::kLong).device(device()));
    const int64_t grad_s = rows * cols * 4;
    const int64_t grad_t = rows * cols * 2;
    const int64_t no_grad = cuda_peak_extra_bytes([&] {
      torch::NoGradGuard guard;
      fusedkd::kd_loss(s, t, y, 2.0, 0.5, 1.0, "kl");
    });
    EXPECT_LT(no_grad, small);
    const int64_t student = cuda_peak_extra_bytes([&] {
      torch::autograd::grad({fusedkd::kd_loss(s, t, y, 2.0, 0.5, 1.0, "kl")}, {s});
    });
    EXPECT_GE(student, grad_s);
    EXPECT_LT(student, grad_s + small);
    const int64_t both = cuda_peak_extra_bytes([&] {
      torch::autograd::grad({fusedkd::kl_div(s, t_grad, 2.0)}, {s, t_grad});
    });
    EXPECT_GE(both, grad_s + grad_t);
    EXPECT_LT(both, grad_s + grad_t + small);
    const at::Tensor upstream = torch::rand({rows}, torch::TensorOptions(torch::kFloat).device(device()));
    const int64_t per_row = cuda_peak_extra_bytes([&] {
      torch::autograd::grad({fusedkd::jsd(s, t, 2.0, 0.5, "none")}, {s}, {upstream});
    });
    EXPECT_GE(per_row, grad_s);
    EXPECT_LT(per_row, grad_s + small);
  }
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

TEST_P(SoftTargetOps, MaskedLogitsGiveFiniteLossesAndGradients) {
  at::Tensor s = logits({8, 64}, at::kFloat, device(), 900);
  at::Tensor t = logits({8, 64}, at::kFloat, device(), 901);
  at::Tensor mask = torch::rand({8, 64}) < 0.25;
  mask.index_put_({torch::indexing::Slice(), 0}, false);
  mask = mask.to(device());
  const float ninf = -std::numeric_limits<float>::infinity();
  s = s.masked_fill(mask, ninf);  // the same vocabulary masked for both
  t = t.masked_fill(mask, ninf);
  for (const std::string divergence : {"kl", "reverse_kl", "jsd", "mse"}) {
    const at::Tensor sg = s.clone().requires_grad_(true);
    const at::Tensor tg = t.clone().requires_grad_(true);
    const at::Tensor loss = fusedkd::kd_loss(sg, tg, std::nullopt, 2.0, 1.0, 0.0, divergence);
    EXPECT_TRUE(std::isfinite(loss.item<float>())) << divergence;
    loss.backward();
    EXPECT_FALSE(sg.grad().isnan().any().item<bool>()) << divergence;
    EXPECT_FALSE(tg.grad().isnan().any().item<bool>()) << divergence;
    EXPECT_TRUE((sg.grad().masked_select(mask) == 0).all().item<bool>()) << divergence;
  }
  // Teacher-only masking: p = 0 where the student still has mass; forward KL stays finite.
  const at::Tensor t_only = logits({8, 64}, at::kFloat, device(), 902).masked_fill(mask, ninf);
  const at::Tensor s_free = logits({8, 64}, at::kFloat, device(), 903).requires_grad_(true);
  const at::Tensor kl = fusedkd::kl_div(s_free, t_only, 1.0);
  EXPECT_TRUE(std::isfinite(kl.item<float>()));
  // (torch's kl_div gives NaN here: 0 * -inf. The spec's reference drops the p = 0 terms.)
  const at::Tensor lq = torch::log_softmax(s_free.detach().to(at::kDouble), -1);
  const at::Tensor lp = torch::log_softmax(t_only.to(at::kDouble), -1);
  const at::Tensor ref = torch::where(mask, torch::zeros_like(lp), lp.exp() * (lp - lq)).sum(-1).mean();
  EXPECT_LT(relative_error(kl, ref), 1e-5);
}

TEST_P(SoftTargetOps, BadInputsRaiseClearErrors) {
  const auto o = torch::TensorOptions().device(device());
  const at::Tensor s = torch::zeros({4, 5}, o), t = torch::zeros({4, 5}, o);
  const at::Tensor y = torch::zeros({4}, o.dtype(torch::kLong));
  expect_error([&] { fusedkd::kl_div(s, torch::zeros({4, 6}, o)); }, {"kl_div", "same shape"});
  expect_error([&] { fusedkd::kl_div(s.to(torch::kLong), t); }, {"student_logits", "Long"});
  expect_error([&] { fusedkd::jsd(s, t.to(torch::kInt)); }, {"teacher_logits", "Int"});
  expect_error([&] { fusedkd::soft_mse(torch::zeros({}, o), torch::zeros({}, o)); }, {"at least 1 dim"});
  expect_error([&] { fusedkd::kl_div(torch::zeros({4, 0}, o), torch::zeros({4, 0}, o)); }, {"last dim (V)"});
  for (double bad : {0.0, -1.0, std::nan(""), std::numeric_limits<double>::infinity()})
    expect_error([&] { fusedkd::kd_loss(s, t, y, bad); }, {"kd_loss", "temperature"});
  expect_error([&] { fusedkd::kl_div(s, t, 1.0, "average"); }, {"reduction", "average"});
  expect_error([&] { fusedkd::kd_loss(s, t, y, 1.0, 1.0, 0.0, "cosine"); }, {"divergence", "cosine"});
  expect_error([&] { fusedkd::jsd(s, t, 1.0, 1.5); }, {"beta", "[0, 1]"});
  expect_error([&] { fusedkd::kd_loss(s, t, y, 1.0, 1.0, 0.0, "jsd", -0.1); }, {"beta"});
  expect_error([&] { fusedkd::kd_loss(s, t, std::nullopt, 1.0, 1.0, 0.5); }, {"hard_weight", "labels"});
  expect_error([&] { fusedkd::kd_loss(s, t, y.to(torch::kFloat), 1.0, 1.0, 1.0); }, {"labels", "integer"});
  expect_error([&] { fusedkd::kd_loss(s, t, torch::zeros({5}, o.dtype(torch::kLong)), 1.0, 1.0, 1.0); },
               {"labels", "shape"});
  if (!device().is_cuda()) {
    expect_error([&] { fusedkd::kd_loss(s, t, torch::full({4}, 7, torch::kLong), 1.0, 1.0, 1.0); },
                 {"label 7", "outside [0, 5)"});
  } else {
    // On CUDA a bad label cannot be checked without a sync: the loss is NaN instead.
    const at::Tensor bad = torch::full({4}, 7, o.dtype(torch::kLong));
    EXPECT_TRUE(std::isnan(fusedkd::kd_loss(s, t, bad, 1.0, 1.0, 1.0).item<float>()));
    expect_error([&] { fusedkd::kl_div(s, torch::zeros({4, 5})); }, {"same device"});
  }
}

const std::vector<at::ScalarType> kDtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};

// Every (student, teacher) dtype pair: the spec's loss dtype (float64 when either is float64),
// gradients in their inputs' dtypes, values against float64 (a pair no kernel takes as it is is
// promoted, never demoted: a float16 student with a bfloat16 teacher above float16's range stays
// finite).
TEST_P(SoftTargetOps, EveryDtypePairKeepsTheSpecsLossDtypeAndValue) {
  int seed = 900;
  for (const at::ScalarType ts : kDtypes)
    for (const at::ScalarType tt : kDtypes) {
      const at::Tensor s = logits({5, 37}, ts, device(), ++seed);
      at::Tensor t = logits({5, 37}, tt, device(), ++seed);
      const at::Tensor y = torch::randint(0, 37, {5}, torch::TensorOptions().dtype(torch::kLong).device(device()));
      const std::string what = std::string("kd_loss ") + c10::toString(ts) + "/" + c10::toString(tt);
      compare(s, t, true,
              [&](const at::Tensor& a, const at::Tensor& b) { return fusedkd::kd_loss(a, b, y, 2.0, 0.7, 0.3, "kl"); },
              [&](const at::Tensor& a, const at::Tensor& b) {
                return 0.3 * F::cross_entropy(a.view({5, 37}), y) + 0.7 * composite_rows(a, b, 2.0, "kl", 0).mean();
              },
              what);
    }
  // A bfloat16 teacher beyond float16's range (65504) with a float16 student.
  const at::Tensor s = logits({3, 11}, at::kHalf, device(), 7);
  const at::Tensor t = (logits({3, 11}, at::kDouble, device(), 8) * 30000).to(at::kBFloat16);
  const at::Tensor loss = fusedkd::kl_div(s, t, 1e4, "batchmean");
  const at::Tensor ref = reduce(composite_rows(s.to(at::kDouble), t.to(at::kDouble), 1e4, "kl", 0), "batchmean", 11);
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  EXPECT_LT(relative_error(loss, ref), 1e-2) << loss << " " << ref;
}

// A label outside [0, V) is an error on the CPU and a NaN loss on CUDA, whatever hard_weight is
// (also 0: the soft term alone still looks at the labels to choose its rows).
TEST_P(SoftTargetOps, BadLabelAtEveryHardWeight) {
  const auto o = torch::TensorOptions().device(device());
  const at::Tensor s = logits({4, 5}, at::kFloat, device(), 1), t = logits({4, 5}, at::kFloat, device(), 2);
  const at::Tensor bad = torch::tensor({0, 7, 1, 2}, o.dtype(torch::kLong));
  for (const double hard : {0.0, 0.5, 1.0}) {
    if (!device().is_cuda()) {
      expect_error([&] { fusedkd::kd_loss(s, t, bad, 1.0, 1.0, hard); }, {"label 7", "outside [0, 5)"});
    } else {
      EXPECT_TRUE(std::isnan(fusedkd::kd_loss(s, t, bad, 1.0, 1.0, hard).item<float>())) << "hard_weight " << hard;
    }
  }
}

// The CUDA path's host decisions (its dtype rule) driven through the op layer with the CPU
// kernels: for every dtype pair the loss dtype equals the CPU path's and the Meta kernel's, and
// the values agree with the CPU path's.
TEST(CudaHostDecisions, DtypeRuleAgreesWithTheCpuPathAndTheMetaKernel) {
  fusedkd::torch_ext::Backend cuda_rule_on_cpu = fusedkd::torch_ext::cpu_backend();
  cuda_rule_on_cpu.compute_dtypes = fusedkd::cuda_kernel_dtypes;
  int seed = 40;
  for (const at::ScalarType ts : kDtypes)
    for (const at::ScalarType tt : kDtypes) {
      const std::string what = std::string(c10::toString(ts)) + "/" + c10::toString(tt);
      const at::Tensor s = logits({6, 13}, ts, at::kCPU, ++seed), t = logits({6, 13}, tt, at::kCPU, ++seed);
      const at::Tensor y = torch::randint(0, 13, {6}, torch::kLong);
      const auto [loss, gs, gt] = fusedkd::torch_ext::soft_target_forward(
          cuda_rule_on_cpu, s, t, y, 2.0, static_cast<int64_t>(fusedkd::Divergence::ForwardKL), 0.5, -100, 1.0, 0.5,
          false, true, true, true);
      const at::Tensor cpu = fusedkd::kd_loss(s, t, y, 2.0, 1.0, 0.5, "kl");
      const at::Tensor meta = fusedkd::kd_loss(s.to(at::kMeta), t.to(at::kMeta), y.to(at::kMeta), 2.0, 1.0, 0.5, "kl");
      EXPECT_EQ(loss.scalar_type(), cpu.scalar_type()) << what;
      EXPECT_EQ(meta.scalar_type(), cpu.scalar_type()) << what;
      EXPECT_EQ(gs.scalar_type(), ts) << what;
      EXPECT_EQ(gt.scalar_type(), tt) << what;
      EXPECT_LT(relative_error(loss, cpu), 1e-6) << what;
      const fusedkd::DTypePair used = fusedkd::cuda_kernel_dtypes(fusedkd::torch_ext::kernel_dtype(ts),
                                                                  fusedkd::torch_ext::kernel_dtype(tt));
      EXPECT_TRUE(fusedkd::cuda_kernels_take(used.student, used.teacher)) << what;
    }
}

INSTANTIATE_TEST_SUITE_P(All, SoftTargetOps, ::testing::Values(std::string("cpu"), std::string("cuda")),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace

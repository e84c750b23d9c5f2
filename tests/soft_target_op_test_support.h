// Helpers of the soft-target op tests (test_soft_target_op_composites.cpp,
// test_soft_target_op_autograd_dtypes_errors.cpp): tolerances, random logits, the per-row
// divergences written with LibTorch composites in float64 (the way a PyTorch user writes them),
// the reductions, and the SoftTargetOps fixture (one device per parameter) that compares an op's
// loss and gradients with a reference's.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "op_test_support.h"

namespace fusedkd::testing {

inline double tolerance(at::ScalarType a, at::ScalarType b = at::kDouble) {
  auto tol = [](at::ScalarType t) { return t == at::kDouble ? 1e-10 : t == at::kFloat ? 1e-5 : 1e-2; };
  return std::max(tol(a), b == at::kDouble ? 0.0 : tol(b));
}

inline at::Tensor logits(at::IntArrayRef shape, at::ScalarType type, const at::Device& device, int seed,
                         double scale = 3.0) {
  torch::manual_seed(seed);
  return (torch::randn(shape, torch::kDouble) * scale).to(type).to(device);
}

// Per-row divergences in float64 from the composites, the way a PyTorch user writes them.
inline at::Tensor composite_rows(const at::Tensor& s, const at::Tensor& t, double T,
                                 const std::string& divergence, double beta) {
  const at::Tensor lq = torch::log_softmax(s / T, -1);
  const at::Tensor lp = torch::log_softmax(t / T, -1);
  auto kl_rows = [](const at::Tensor& target_log, const at::Tensor& input_log) {
    namespace F = torch::nn::functional;
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

inline at::Tensor reduce(const at::Tensor& rows, const std::string& reduction, int64_t cols) {
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
  // Loss and gradients of `ours` against `reference` in float64, both functions of (s, t) leaves,
  // within max(tolerance, 3x the error of `reference` itself evaluated in the inputs' dtypes): the
  // bound of docs/numerics.md, so a case where float32 is ill-conditioned for everyone does not
  // fail on rounding the composite shares. The upstream gradient is drawn from a fixed seed.
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
    const at::Tensor s_low = s0.detach().clone().requires_grad_(true);
    const at::Tensor t_low = t0.detach().clone().requires_grad_(teacher_grad);
    const at::Tensor ref_low = reference(s_low, t_low);  // the composite in the inputs' dtypes
    const double tol = tolerance(s0.scalar_type(), t0.scalar_type());
    const auto bound = [&](const at::Tensor& composite, const at::Tensor& exact) {
      return std::max(tol, 3 * relative_error(composite.to(exact.dtype()), exact));
    };
    EXPECT_LE(relative_error(loss, ref), bound(ref_low, ref)) << what << " loss " << loss << " ref " << ref;
    at::Generator generator = at::detail::createCPUGenerator(20261130);
    const at::Tensor upstream = at::randn(loss.sizes(), generator, at::TensorOptions(at::kDouble));
    std::vector<at::Tensor> inputs = {s}, inputs64 = {s64}, inputs_low = {s_low};
    if (teacher_grad) {
      inputs.push_back(t);
      inputs64.push_back(t64);
      inputs_low.push_back(t_low);
    }
    const auto grads = torch::autograd::grad({loss}, inputs, {upstream.to(loss.dtype()).to(loss.device())});
    const auto grads64 = torch::autograd::grad({ref}, inputs64, {upstream.to(ref.device())});
    const auto grads_low = torch::autograd::grad({ref_low}, inputs_low, {upstream.to(ref_low.dtype()).to(ref_low.device())});
    for (size_t i = 0; i < grads.size(); ++i) {
      EXPECT_EQ(grads[i].scalar_type(), inputs[i].scalar_type()) << what;
      EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << what;
      EXPECT_LE(relative_error(grads[i], grads64[i]), bound(grads_low[i], grads64[i]))
          << what << (i == 0 ? " student" : " teacher") << " gradient";
    }
  }
};

}  // namespace fusedkd::testing

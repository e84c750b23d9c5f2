// kl_div, jsd, soft_mse, kd_loss beyond their values: autograd (rows all ignored give zero
// gradients, grad_output scaling, retain_graph, no_grad, per-row weights), the memory contract (a
// gradient buffer only for inputs that need one, read from the CUDA allocator), masked logits,
// every (student, teacher) dtype pair (the spec's loss dtype and values), every bad input the spec
// lists and bad labels at every hard weight, and the CUDA path's host dtype rule driven with the
// CPU kernels (CudaHostDecisions). The values against LibTorch composites:
// test_soft_target_op_composites.cpp.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "cuda_memory.h"
#include "fusedkd/build_config.h"
#include "fusedkd/torch.h"
#include "ops.h"
#include "soft_target_op_test_support.h"

namespace F = torch::nn::functional;

namespace {

using fusedkd::testing::composite_rows;
using fusedkd::testing::expect_error;
using fusedkd::testing::logits;
using fusedkd::testing::reduce;
using fusedkd::testing::relative_error;
using fusedkd::testing::SoftTargetOps;

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
                 {"kd_loss", "labels", "label 7", "outside [0, 5)"});
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
      expect_error([&] { fusedkd::kd_loss(s, t, bad, 1.0, 1.0, hard); }, {"kd_loss", "labels", "label 7", "outside [0, 5)"});
    } else {
      EXPECT_TRUE(std::isnan(fusedkd::kd_loss(s, t, bad, 1.0, 1.0, hard).item<float>())) << "hard_weight " << hard;
    }
  }
}

// The CUDA path's host decisions (its dtype rule) driven through the op layer with the CPU
// kernels: for every dtype pair the loss dtype equals the CPU path's and the Meta kernel's, and
// the values agree with the CPU path's. The gradients come back in their inputs' dtypes, but
// float16's in float32 (gradient_buffer_type: rounded after grad_output's scaling).
TEST(CudaHostDecisions, DtypeRuleAgreesWithTheCpuPathAndTheMetaKernel) {
  fusedkd::torch_ext::Backend cuda_rule_on_cpu = fusedkd::torch_ext::cpu_backend();
  cuda_rule_on_cpu.compute_dtypes = fusedkd::cuda_kernel_dtypes;
  cuda_rule_on_cpu.float16_gradients_in_float32 = false;  // CUDA's: a float16 input read as a float32 copy
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
      EXPECT_EQ(gs.scalar_type(), ts == at::kHalf ? at::kFloat : ts) << what;
      EXPECT_EQ(gt.scalar_type(), tt == at::kHalf ? at::kFloat : tt) << what;
      EXPECT_LT(relative_error(loss, cpu), 1e-6) << what;
      // The pair that reaches the kernels: float16 read as float32 where its gradient is wanted.
      const fusedkd::DTypePair used =
          fusedkd::cuda_kernel_dtypes(fusedkd::torch_ext::kernel_dtype(fusedkd::torch_ext::kernel_input_type(s, true)),
                                      fusedkd::torch_ext::kernel_dtype(fusedkd::torch_ext::kernel_input_type(t, true)));
      EXPECT_TRUE(fusedkd::cuda_kernels_take(used.student, used.teacher)) << what;
    }
}

INSTANTIATE_TEST_SUITE_P(All, SoftTargetOps, ::testing::Values(std::string("cpu"), std::string("cuda")),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace

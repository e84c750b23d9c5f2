// Helpers of the soft-target launcher tests (test_soft_target_kernels.cpp: the main suite, CPU and
// CUDA; test_soft_target_cuda_regimes.cpp: the CUDA long-row regimes): the spec's formulas for one
// row in float64, a case (dtypes, divergence, shape, labels, CUDA long-row regime) with its test
// name and printer, what the launcher must produce for it, and the check of one case against that
// (the body of SoftTargetKernel.LossAndGradientsMatchFloat64Reference, which both files
// instantiate). Gradient buffers are poisoned with NaN first, so an element the kernel fails to
// write shows up.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "fusedkd/build_config.h"
#include "fusedkd/soft_target.h"
#include "kernel_test_support.h"
#include "reference.h"

namespace fusedkd::testing {

struct RowResult {
  double loss;
  std::vector<double> grad_s, grad_t;
};

// Spec formulas, float64, one row; `beta` only for JSD.
inline RowResult reference_row(const double* s, const double* t, std::int64_t V, double T, Divergence d, double beta) {
  std::vector<double> lq = softmax_reference(std::vector<double>(s, s + V), 1, V, T, true);
  std::vector<double> lp = softmax_reference(std::vector<double>(t, t + V), 1, V, T, true);
  std::vector<double> q(V), p(V), lm(V, 0.0);
  for (std::int64_t j = 0; j < V; ++j) {
    q[j] = std::exp(lq[j]);
    p[j] = std::exp(lp[j]);
    if (d == Divergence::JSD) {
      const double a = lp[j] + std::log(beta), b = lq[j] + std::log(1 - beta);
      const double hi = std::max(a, b);
      lm[j] = std::isinf(hi) && hi < 0 ? hi : hi + std::log(std::exp(a - hi) + std::exp(b - hi));
    }
  }
  auto term = [](double w, double x) { return w == 0 ? 0.0 : w * x; };
  RowResult r{0.0, std::vector<double>(V), std::vector<double>(V)};
  double aux_s = 0, aux_t = 0;
  for (std::int64_t j = 0; j < V; ++j) {
    switch (d) {
      case Divergence::ForwardKL: r.loss += term(p[j], lp[j] - lq[j]); break;
      case Divergence::ReverseKL: r.loss += term(q[j], lq[j] - lp[j]); break;
      case Divergence::JSD:
        r.loss += beta * term(p[j], lp[j] - lm[j]) + (1 - beta) * term(q[j], lq[j] - lm[j]);
        aux_s += term(q[j], (1 - beta) * (lq[j] - lm[j]));
        aux_t += term(p[j], beta * (lp[j] - lm[j]));
        break;
      case Divergence::MSE:
        r.loss += (q[j] - p[j]) * (q[j] - p[j]);
        aux_s += 2 * (q[j] - p[j]) * q[j];
        aux_t += 2 * (p[j] - q[j]) * p[j];
        break;
    }
  }
  for (std::int64_t j = 0; j < V; ++j) {
    switch (d) {
      case Divergence::ForwardKL:
        r.grad_s[j] = (q[j] - p[j]) / T;
        r.grad_t[j] = term(p[j], (lp[j] - lq[j] - r.loss) / T);
        break;
      case Divergence::ReverseKL:
        r.grad_s[j] = term(q[j], (lq[j] - lp[j] - r.loss) / T);
        r.grad_t[j] = (p[j] - q[j]) / T;
        break;
      case Divergence::JSD:
        r.grad_s[j] = term(q[j], ((1 - beta) * (lq[j] - lm[j]) - aux_s) / T);
        r.grad_t[j] = term(p[j], (beta * (lp[j] - lm[j]) - aux_t) / T);
        break;
      case Divergence::MSE:
        r.grad_s[j] = q[j] * (2 * (q[j] - p[j]) - aux_s) / T;
        r.grad_t[j] = p[j] * (2 * (p[j] - q[j]) - aux_t) / T;
        break;
    }
  }
  return r;
}

// Which CUDA kernel takes rows beyond the register tiles (detail::CudaLongRowPolicy): the
// launcher's own choice, the streaming kernel, or on-chip rows split over clusters of at least
// 2, 4 or 16 blocks (sm_90 and later; elsewhere the launcher streams them).
enum class Regime { Auto, Streaming, Cluster2, Cluster4, Cluster16 };

struct Case {
  Backend backend;
  DType student, teacher;
  Divergence divergence;
  double beta;
  std::int64_t rows, cols;
  double temperature;
  bool labels;   // labels with some ignored rows, hard weight 0.5
  bool per_row;  // per-row losses instead of the mean
  Regime regime = Regime::Auto;
  double masked = 0.05;  // the fraction of the vocabulary masked (-inf) for both models
};

#if FUSEDKD_WITH_CUDA
// Sets the CUDA long-row policy for a regime and restores the previous one.
class RegimeGuard {
 public:
  explicit RegimeGuard(Regime regime) : saved_(detail::cuda_long_row_policy()) {
    detail::CudaLongRowPolicy policy;
    policy.streaming_only = regime == Regime::Streaming;
    policy.min_blocks_per_row = regime == Regime::Cluster2 ? 2 : regime == Regime::Cluster4 ? 4
                                : regime == Regime::Cluster16 ? 16 : 1;
    detail::set_cuda_long_row_policy(policy);
  }
  ~RegimeGuard() { detail::set_cuda_long_row_policy(saved_); }
  RegimeGuard(const RegimeGuard&) = delete;
  RegimeGuard& operator=(const RegimeGuard&) = delete;

 private:
  detail::CudaLongRowPolicy saved_;
};
#endif

inline const char* divergence_name(Divergence d) {
  const char* names[] = {"kl", "reverse_kl", "jsd", "mse"};
  return names[static_cast<int>(d)];
}

inline const char* regime_name(Regime regime) {
  const char* names[] = {"auto", "streaming", "cluster2", "cluster4", "cluster16"};
  return names[static_cast<int>(regime)];
}

inline std::string name_of(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::ostringstream s;
  s << backend_name(c.backend) << "_" << dtype_name(c.student) << "_" << dtype_name(c.teacher) << "_"
    << divergence_name(c.divergence) << "_R" << c.rows << "_V" << c.cols << (c.labels ? "_labels" : "")
    << (c.per_row ? "_per_row" : "") << (c.masked == 0 ? "_unmasked" : "");
  if (c.regime != Regime::Auto) s << "_" << regime_name(c.regime);
  s << "_" << info.index;
  return s.str();
}

// How GoogleTest prints a case (--gtest_list_tests, failure messages): every field, by name.
inline void PrintTo(const Case& c, std::ostream* os) {
  *os << "{" << backend_name(c.backend) << ", student " << dtype_name(c.student) << ", teacher "
      << dtype_name(c.teacher) << ", " << divergence_name(c.divergence);
  if (c.divergence == Divergence::JSD) *os << " beta " << c.beta;
  *os << ", rows " << c.rows << ", cols " << c.cols << ", T " << c.temperature << (c.labels ? ", labels" : "")
      << (c.per_row ? ", per_row" : "") << ", regime " << regime_name(c.regime) << ", masked " << c.masked << "}";
}

// What the launcher must produce for a case, in float64: per-row losses, the total, the gradients,
// and the weight of a valid row.
struct Expected {
  std::vector<double> rows, grad_s, grad_t;
  double total = 0, weight = 1;
};

inline Expected expected_of(const Case& c, const std::vector<double>& sv, const std::vector<double>& tv,
                            const std::vector<std::int64_t>& labels, double soft, double hard) {
  const std::int64_t R = c.rows, V = c.cols;
  Expected e;
  e.rows.assign(static_cast<std::size_t>(R), 0.0);
  e.grad_s.assign(sv.size(), 0.0);
  e.grad_t.assign(sv.size(), 0.0);
  std::int64_t valid = 0;
  for (std::int64_t r = 0; r < R; ++r) valid += !c.labels || labels[r] != -100;
  const double w = c.per_row ? 1.0 : (valid ? 1.0 / valid : 0.0);
  for (std::int64_t r = 0; r < R; ++r) {
    if (c.labels && labels[r] == -100) continue;
    const RowResult row = reference_row(&sv[r * V], &tv[r * V], V, c.temperature, c.divergence, c.beta);
    const double* srow = &sv[r * V];
    double m = -std::numeric_limits<double>::infinity(), z = 0;
    for (std::int64_t j = 0; j < V; ++j) m = std::max(m, srow[j]);
    for (std::int64_t j = 0; j < V; ++j) z += std::exp(srow[j] - m);
    const double ce = c.labels ? std::log(z) + m - srow[labels[r]] : 0.0;
    e.rows[r] = soft * row.loss;
    e.total += soft * row.loss + hard * ce;
    for (std::int64_t j = 0; j < V; ++j) {
      const double hard_grad = c.labels ? std::exp(srow[j] - m) / z - (j == labels[r] ? 1.0 : 0.0) : 0.0;
      e.grad_s[r * V + j] = w * (soft * row.grad_s[j] + hard * hard_grad);
      e.grad_t[r * V + j] = w * soft * row.grad_t[j];
    }
  }
  e.total *= w;
  e.weight = w;
  return e;
}

// The launcher against the float64 reference for one case: the suite's instantiations All (in
// test_soft_target_kernels.cpp) and CudaRegimes (in test_soft_target_cuda_regimes.cpp) each define
// the TEST_P, which calls check_against_reference().
class SoftTargetKernel : public ::testing::TestWithParam<Case> {
 protected:
  void check_against_reference() {
    const Case c = GetParam();
    if (const char* why = missing_device(c.backend)) GTEST_SKIP() << why;
    const std::int64_t R = c.rows, V = c.cols;
    const std::uint64_t seed = static_cast<std::uint64_t>(R * 31 + V * 7 + static_cast<int>(c.divergence));
    // A masked vocabulary (-inf) is masked for both models: a -inf student logit where the teacher
    // has mass makes the forward KL infinite, as the math says.
    const std::vector<double> teacher_logits = random_logits(R, V, seed + 1, 3.0, c.masked);
    std::vector<double> student_logits = random_logits(R, V, seed, 3.0);
    for (std::size_t i = 0; i < student_logits.size(); ++i)
      if (std::isinf(teacher_logits[i])) student_logits[i] = teacher_logits[i];
    const Buffer s = Buffer::from(c.student, student_logits);
    const Buffer t = Buffer::from(c.teacher, teacher_logits);
    std::vector<std::int64_t> labels(static_cast<std::size_t>(R));
    for (std::int64_t r = 0; r < R; ++r) labels[r] = r % 3 == 1 ? -100 : (r * 7919) % V;
    const double hard = c.labels ? 0.5 : 0.0, soft = 0.8;

    // Reference: the rounded inputs, the spec's row formulas, the kernel's weighting.
    const Expected ref = expected_of(c, s.values(), t.values(), labels, soft, hard);
    const std::vector<double>& ref_gs = ref.grad_s;
    const std::vector<double>& ref_gt = ref.grad_t;
    const std::vector<double>& ref_rows = ref.rows;
    const double ref_total = ref.total, w = ref.weight;

    SoftTargetArgs args;
    args.student_dtype = c.student;
    args.teacher_dtype = c.teacher;
    args.student_row_stride = args.teacher_row_stride = V;
    args.rows = R;
    args.cols = V;
    args.temperature = c.temperature;
    args.divergence = c.divergence;
    args.beta = c.beta;
    args.ignore_index = -100;
    args.soft_scale = soft;
    args.hard_scale = hard;
    args.per_row_loss = c.per_row;
    const bool dbl = soft_target_uses_double(args);
    Buffer loss(dbl ? DType::Float64 : DType::Float32, c.per_row ? static_cast<std::size_t>(R) : 1);
    Buffer gs(c.student, ref_gs.size()), gt(c.teacher, ref_gs.size());
    loss.poison();
    gs.poison();
    gt.poison();
    std::vector<unsigned char> workspace(soft_target_workspace_bytes(args));
    Buffer label_buffer(DType::Float64, labels.size());  // 8-byte storage for the int64 labels
    std::memcpy(label_buffer.data(), labels.data(), labels.size() * 8);
  #if FUSEDKD_WITH_CUDA
    const RegimeGuard regime(c.regime);  // the CUDA launcher's long-row kernels (CPU: no effect)
  #endif
    run_on_backend(c.backend, {&s, &t, &label_buffer}, {&loss, &gs, &gt}, workspace.size(),
                   [&](const std::vector<const void*>& in, const std::vector<void*>& out, void* ws, void* stream) {
                     args.student = in[0];
                     args.teacher = in[1];
                     args.labels = c.labels ? static_cast<const std::int64_t*>(in[2]) : nullptr;
                     args.loss = out[0];
                     args.grad_student = out[1];
                     args.grad_teacher = out[2];
                     args.workspace = ws;
                     FUSEDKD_ON_BACKEND(c.backend, stream, soft_target_loss_cpu(args),
                                        soft_target_loss_cuda(args, FUSEDKD_TEST_STREAM(stream)));
                   });
    const double tol = std::max(tolerance(c.student), tolerance(c.teacher)) * (dbl ? 1.0 : 2.0);
    // Saturated rows (outliers at low T make both softmaxes one-hot) and V = 1 have losses and
    // gradients near 0, where relative error means nothing: errors are measured against at least
    // the loss scale (soft weight x an O(1) log-ratio) and 1e-4 of the gradient scale w / T.
    const double loss_floor = soft;
    const double grad_floor = 1e-4 * w / c.temperature;
    if (c.per_row) {
      EXPECT_LT(relative_error(loss.values(), ref_rows, loss_floor), tol);
    } else {
      EXPECT_LT(relative_error(loss.values(), {ref_total}, loss_floor), tol)
          << "loss " << loss.get(0) << " reference " << ref_total;
    }
    EXPECT_LT(relative_error(gs.values(), ref_gs, std::max(grad_floor, resolution_floor(c.student))), tol)
        << "student gradient";
    EXPECT_LT(relative_error(gt.values(), ref_gt, std::max(grad_floor, resolution_floor(c.teacher))), tol)
        << "teacher gradient";
  }
};

}  // namespace fusedkd::testing

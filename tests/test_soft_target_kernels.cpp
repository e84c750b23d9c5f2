// The soft-target launcher alone (no LibTorch), CPU and CUDA, against a float64 reference written
// from the spec's formulas: every divergence, dtype pairs, row lengths of every CUDA regime,
// labels with ignored rows, per-row losses; gradient buffers are poisoned with NaN first, so an
// element the kernel fails to write shows up.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "fusedkd/build_config.h"
#include "fusedkd/soft_target.h"
#include "fusedkd/soft_target_math.h"
#include "kernel_test_support.h"
#include "reference.h"

namespace fusedkd::testing {
namespace {

struct RowResult {
  double loss;
  std::vector<double> grad_s, grad_t;
};

// Spec formulas, float64, one row; `beta` only for JSD.
RowResult reference_row(const double* s, const double* t, std::int64_t V, double T, Divergence d, double beta) {
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

const char* divergence_name(Divergence d) {
  const char* names[] = {"kl", "reverse_kl", "jsd", "mse"};
  return names[static_cast<int>(d)];
}

const char* regime_name(Regime regime) {
  const char* names[] = {"auto", "streaming", "cluster2", "cluster4", "cluster16"};
  return names[static_cast<int>(regime)];
}

std::string name_of(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::ostringstream s;
  s << backend_name(c.backend) << "_" << dtype_name(c.student) << "_" << dtype_name(c.teacher) << "_"
    << divergence_name(c.divergence) << "_R" << c.rows << "_V" << c.cols << (c.labels ? "_labels" : "")
    << (c.per_row ? "_per_row" : "");
  if (c.regime != Regime::Auto) s << "_" << regime_name(c.regime);
  s << "_" << info.index;
  return s.str();
}

// How GoogleTest prints a case (--gtest_list_tests, failure messages): every field, by name.
void PrintTo(const Case& c, std::ostream* os) {
  *os << "{" << backend_name(c.backend) << ", student " << dtype_name(c.student) << ", teacher "
      << dtype_name(c.teacher) << ", " << divergence_name(c.divergence);
  if (c.divergence == Divergence::JSD) *os << " beta " << c.beta;
  *os << ", rows " << c.rows << ", cols " << c.cols << ", T " << c.temperature << (c.labels ? ", labels" : "")
      << (c.per_row ? ", per_row" : "") << ", regime " << regime_name(c.regime) << "}";
}

// What the launcher must produce for a case, in float64: per-row losses, the total, the gradients,
// and the weight of a valid row.
struct Expected {
  std::vector<double> rows, grad_s, grad_t;
  double total = 0, weight = 1;
};

Expected expected_of(const Case& c, const std::vector<double>& sv, const std::vector<double>& tv,
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

class SoftTargetKernel : public ::testing::TestWithParam<Case> {};

TEST_P(SoftTargetKernel, LossAndGradientsMatchFloat64Reference) {
  const Case c = GetParam();
  if (const char* why = missing_device(c.backend)) GTEST_SKIP() << why;
  const std::int64_t R = c.rows, V = c.cols;
  const std::uint64_t seed = static_cast<std::uint64_t>(R * 31 + V * 7 + static_cast<int>(c.divergence));
  // A masked vocabulary (-inf) is masked for both models: a -inf student logit where the teacher
  // has mass makes the forward KL infinite, as the math says.
  const std::vector<double> teacher_logits = random_logits(R, V, seed + 1, 3.0, 0.05);
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

std::vector<Case> all_cases() {
  struct Pair {
    DType s, t;
  };
  const Pair pairs[] = {{DType::Float32, DType::Float32}, {DType::Float64, DType::Float64},
                        {DType::BFloat16, DType::BFloat16}, {DType::Float16, DType::Float16},
                        {DType::Float32, DType::BFloat16}, {DType::BFloat16, DType::Float32}};
  struct Div {
    Divergence d;
    double beta;
  };
  const Div divs[] = {{Divergence::ForwardKL, 0}, {Divergence::ReverseKL, 0}, {Divergence::JSD, 0.1},
                      {Divergence::JSD, 0.5},      {Divergence::JSD, 0.9},      {Divergence::MSE, 0}};
  // Row lengths of every CUDA regime (sub-warp, warp, block tiles, on chip) and both CPU paths
  // (rows of up to 31 elements 16 at a time, R = 37 and 20 leaving a partial group; longer rows
  // one by one).
  const std::int64_t shapes[][2] = {{1, 1}, {5, 7}, {37, 33}, {6, 130}, {3, 1031}, {4, 4096}, {2, 5000}, {2, 33000},
                                    {37, 10}, {20, 31}};
  const double temperatures[] = {1.0, 0.5, 4.0, 20.0};
  std::vector<Case> cases;
  int i = 0;
  for (Backend backend : {Backend::Cpu, Backend::Cuda})
    for (const Pair& pair : pairs)
      for (const Div& div : divs) {
        const auto& shape = shapes[i % std::size(shapes)];
        cases.push_back({backend, pair.s, pair.t, div.d, div.beta, shape[0], shape[1], temperatures[i % 4],
                         i % 3 == 0, i % 5 == 2});
        if (cases.back().per_row) cases.back().labels = false;
        ++i;
      }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(All, SoftTargetKernel, ::testing::ValuesIn(all_cases()), name_of);

// The CUDA kernels for rows beyond the register tiles, each forced in turn: on chip in one block
// (V = 5001: odd, so rows start at every alignment), on chip or split over a cluster (V = 33001:
// 264 KB of float32 for the pair), over a 16-block cluster on sm_90 (V = 262147), the streaming
// kernel, and clusters forced onto short rows (slices of a few hundred elements per block).
std::vector<Case> regime_cases() {
  const std::pair<DType, DType> pairs[] = {{DType::Float32, DType::Float32}, {DType::Float64, DType::Float64},
                                           {DType::BFloat16, DType::BFloat16}, {DType::Float16, DType::Float16},
                                           {DType::Float32, DType::BFloat16}, {DType::BFloat16, DType::Float32}};
  const std::pair<Divergence, double> divs[] = {{Divergence::ForwardKL, 0}, {Divergence::ReverseKL, 0},
                                                {Divergence::JSD, 0.3}, {Divergence::MSE, 0}};
  struct Shape {
    std::int64_t rows, cols;
    Regime regime;
  };
  const Shape shapes[] = {{3, 5001, Regime::Auto},      {2, 33001, Regime::Auto},     {1, 262147, Regime::Auto},
                          {3, 33001, Regime::Streaming}, {3, 5001, Regime::Cluster2}, {4, 5001, Regime::Cluster4},
                          {3, 9001, Regime::Cluster16}};
  const double temperatures[] = {1.0, 0.5, 4.0, 20.0};
  std::vector<Case> cases;
  int i = 0;
  for (const auto& pair : pairs)
    for (const Shape& shape : shapes) {
      const auto& div = divs[i % 4];
      Case c{Backend::Cuda, pair.first, pair.second, div.first, div.second, shape.rows, shape.cols,
             temperatures[(i / 4) % 4], i % 3 != 2, i % 3 == 2, shape.regime};
      cases.push_back(c);
      ++i;
    }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(CudaRegimes, SoftTargetKernel, ::testing::ValuesIn(regime_cases()), name_of);

#if FUSEDKD_WITH_CUDA
// The launcher picks the regime docs/architecture.md describes for the device it runs on.
TEST(SoftTargetCudaPlan, RowsTakeTheDocumentedRegime) {
  if (const char* why = missing_device(Backend::Cuda)) GTEST_SKIP() << why;
  int device = 0, major = 0, optin = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), cudaSuccess);
  // Clusters need the device (sm_90+) and kernels built with their code (a build for sm_80 alone
  // runs on an H100 from PTX without it: no clusters then, scripts/gpu_check.sh runs that case).
  const bool clusters = major >= 9 && FUSEDKD_CUDA_CLUSTER_CODE;
  using Kind = detail::CudaRowPlan::Kind;
  const DType f32 = DType::Float32, bf16 = DType::BFloat16;
  EXPECT_EQ(detail::soft_target_cuda_row_plan(f32, f32, 1).kind, Kind::RegisterTile);
  // The largest rows a 256-thread tile holds at any alignment (detail::register_tile): 4093
  // float32 and 4089 bf16 elements (4096 may start mid-chunk and span 1025 chunks of 4).
  EXPECT_EQ(detail::soft_target_cuda_row_plan(f32, f32, 4093).kind, Kind::RegisterTile);
  EXPECT_EQ(detail::soft_target_cuda_row_plan(f32, f32, 4094).kind, Kind::OnChip);
  EXPECT_EQ(detail::soft_target_cuda_row_plan(bf16, bf16, 4089).kind, Kind::RegisterTile);
  EXPECT_EQ(detail::soft_target_cuda_row_plan(bf16, bf16, 4090).kind, Kind::OnChip);

  const detail::CudaRowPlan mid = detail::soft_target_cuda_row_plan(f32, f32, 5001);  // 40 KB
  EXPECT_EQ(mid.kind, Kind::OnChip);
  EXPECT_EQ(mid.blocks_per_row, 1);
  // bf16 at V = 33001: 132 KB for the pair, within one block on sm_80 (163 KB) and sm_90 (227 KB).
  const detail::CudaRowPlan bf16_mid = detail::soft_target_cuda_row_plan(bf16, bf16, 33001);
  if (optin >= 140 * 1024) {
    EXPECT_EQ(bf16_mid.kind, Kind::OnChip);
    EXPECT_EQ(bf16_mid.blocks_per_row, 1);
  }
  // float32 at V = 262147: 2 MB for the pair, a 16-block cluster on sm_90, streamed before.
  const detail::CudaRowPlan llm = detail::soft_target_cuda_row_plan(f32, f32, 262147);
  if (clusters) {
    EXPECT_EQ(llm.kind, Kind::OnChip);
    EXPECT_EQ(llm.blocks_per_row, 16);
  } else {
    EXPECT_EQ(llm.kind, Kind::Streaming);
  }
  {
    const RegimeGuard streaming(Regime::Streaming);
    EXPECT_EQ(detail::soft_target_cuda_row_plan(f32, f32, 5001).kind, Kind::Streaming);
    EXPECT_EQ(detail::soft_target_cuda_row_plan(f32, f32, 4093).kind, Kind::RegisterTile);
  }
  {
    const RegimeGuard cluster(Regime::Cluster4);
    const detail::CudaRowPlan forced = detail::soft_target_cuda_row_plan(f32, f32, 5001);
    EXPECT_EQ(forced.kind, clusters ? Kind::OnChip : Kind::Streaming);
    if (clusters) EXPECT_EQ(forced.blocks_per_row, 4);
  }
  EXPECT_EQ(detail::cuda_long_row_policy().min_blocks_per_row, 1);  // the guard restored it
  EXPECT_THROW(detail::set_cuda_long_row_policy({false, 0}), std::invalid_argument);
}
// An error left pending by an earlier, unchecked CUDA call is reported by the next launch, never
// cleared away: here by the on-chip planner, whose cluster occupancy queries are made to fail (a
// failed query used to clear every pending error); after the report the next call works.
TEST(SoftTargetCudaErrors, APendingErrorSurfaces) {
  if (const char* why = missing_device(Backend::Cuda)) GTEST_SKIP() << why;
  int device = 0, major = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
  const std::int64_t rows = 3, cols = 6007;  // a length no other test plans: the queries run here
  float *s = nullptr, *t = nullptr, *loss = nullptr;
  void* workspace = nullptr;
  ASSERT_EQ(cudaMalloc(&s, rows * cols * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&t, rows * cols * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&loss, sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemset(s, 0, rows * cols * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemset(t, 0, rows * cols * sizeof(float)), cudaSuccess);
  SoftTargetArgs args;
  args.student = s;
  args.teacher = t;
  args.student_row_stride = args.teacher_row_stride = cols;
  args.rows = rows;
  args.cols = cols;
  args.loss = loss;
  ASSERT_EQ(cudaMalloc(&workspace, soft_target_workspace_bytes(args)), cudaSuccess);
  args.workspace = workspace;
  const detail::CudaLongRowPolicy saved = detail::cuda_long_row_policy();
  detail::CudaLongRowPolicy policy;
  policy.min_blocks_per_row = 4;  // a cluster: the planner queries its occupancy (sm_90 builds)
  policy.fail_cluster_queries = true;
  detail::set_cuda_long_row_policy(policy);
  // An invalid copy direction: a non-sticky error the caller did not check.
  ASSERT_NE(cudaMemcpy(loss, loss, 4, static_cast<cudaMemcpyKind>(77)), cudaSuccess);
  std::string message;
  try {
    soft_target_loss_cuda(args, nullptr);
  } catch (const std::exception& e) {
    message = e.what();
  }
  EXPECT_FALSE(message.empty()) << "the pending error was swallowed";
  // With clusters the planner reports it ("pending"); without, the launcher's final check does.
  if (major >= 9 && FUSEDKD_CUDA_CLUSTER_CODE) EXPECT_NE(message.find("pending"), std::string::npos) << message;
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // reported once, and cleared
  // No pending error: the failed queries only rule clusters out (the row streams), the loss is 0.
  EXPECT_NO_THROW(soft_target_loss_cuda(args, nullptr));
  float value = -1;
  EXPECT_EQ(cudaMemcpy(&value, loss, sizeof value, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(value, 0.0f);  // equal rows: KL 0
  detail::set_cuda_long_row_policy(saved);
  for (void* p : {static_cast<void*>(s), static_cast<void*>(t), static_cast<void*>(loss), workspace}) cudaFree(p);
}
#endif

// The KL loss gathered with the statistics (KLStats, include/fusedkd/soft_target_math.h): a row
// cut into runs of 4 at random, each run's (statistics, C) taken relative to its own maxima, the
// runs merged left to right and as a tree, against the float64 KL of the whole row.
double kl_via_runs(const std::vector<float>& s, const std::vector<float>& t, double T, bool reverse, bool tree) {
  const float inv_t = static_cast<float>(1.0 / T), scale_log2 = static_cast<float>(kLog2e / T);
  const KLStatsMerge<float> merge{scale_log2, inv_t, reverse};
  std::vector<KLStats<float>> runs;
  for (std::size_t j = 0; j < s.size(); j += 4) {
    float rs[4], rt[4];
    for (int k = 0; k < 4; ++k) {
      const bool in = j + k < s.size();
      rs[k] = in ? s[j + k] : -std::numeric_limits<float>::infinity();
      rt[k] = in ? t[j + k] : -std::numeric_limits<float>::infinity();
    }
    runs.push_back(kl_stats_of(rs, rt, scale_log2, inv_t, false, reverse));
  }
  while (runs.size() > 1) {
    std::vector<KLStats<float>> next;
    if (tree) {
      for (std::size_t i = 0; i + 1 < runs.size(); i += 2) next.push_back(merge(runs[i], runs[i + 1]));
      if (runs.size() % 2) next.push_back(runs.back());
    } else {
      next.push_back(merge(runs[0], runs[1]));
      next.insert(next.end(), runs.begin() + 2, runs.end());
    }
    runs = next;
  }
  const KDRow<float> row = KDRow<float>::make(runs[0].stats, inv_t, reverse ? Divergence::ReverseKL : Divergence::ForwardKL, 0.5f);
  return kl_from_cross(runs[0].stats, row, runs[0].cross);
}

TEST(KLStats, MergedRunsGiveTheRowsKL) {
  for (int reverse = 0; reverse < 2; ++reverse)
    for (double T : {0.5, 1.0, 4.0, 20.0})
      for (std::int64_t V : {1, 5, 1000, 33001}) {
        // Teacher and student both masked at 5% of the vocabulary; the student shifted by a large
        // constant (a shift changes neither softmax: centred values keep every digit).
        const std::vector<double> t64 = random_logits(1, V, 11 + V, 3.0, 0.05);
        std::vector<double> s64 = random_logits(1, V, 12 + V, 3.0);
        for (std::int64_t j = 0; j < V; ++j) s64[j] = std::isinf(t64[j]) ? t64[j] : s64[j] + 1000.0;
        const std::vector<float> s(s64.begin(), s64.end()), t(t64.begin(), t64.end());
        const std::vector<double> sv(s.begin(), s.end()), tv(t.begin(), t.end());
        const double ref = reference_row(sv.data(), tv.data(), V, T,
                                         reverse ? Divergence::ReverseKL : Divergence::ForwardKL, 0).loss;
        for (bool tree : {false, true}) {
          const double got = kl_via_runs(s, t, T, reverse, tree);
          EXPECT_NEAR(got, ref, 2e-5 * std::max(1.0, std::abs(ref)))
              << "reverse " << reverse << " T " << T << " V " << V << " tree " << tree;
        }
      }
}

TEST(KLStats, StudentMaskedWhereTheTeacherHasMassGivesInfinity) {
  const float inf = std::numeric_limits<float>::infinity();
  // The student's -inf falls in a run of its own (every student value there -inf).
  const std::vector<float> s = {1.f, 2.f, 0.5f, -1.f, -inf, -inf, -inf, -inf, 3.f};
  const std::vector<float> t = {0.f, 1.f, 2.f, 0.f, 1.f, -inf, 2.f, 0.f, 1.f};
  EXPECT_EQ(kl_via_runs(s, t, 2.0, false, false), inf);
  EXPECT_EQ(kl_via_runs(s, t, 2.0, false, true), inf);
  // The reverse KL weighs by the student: its -inf entries weigh 0, and it stays finite.
  const double reverse = kl_via_runs(s, t, 2.0, true, true);
  EXPECT_TRUE(std::isfinite(reverse));
  const std::vector<double> sv(s.begin(), s.end()), tv(t.begin(), t.end());
  EXPECT_NEAR(reverse, reference_row(sv.data(), tv.data(), 9, 2.0, Divergence::ReverseKL, 0).loss, 1e-6);
  // Equal rows: exactly 0 however the runs merge.
  EXPECT_EQ(kl_via_runs(t, t, 3.0, false, true), 0.0);
}

// Runs the CPU launcher (float32 inputs, the total loss) with tasks of `task_rows` rows handed out
// last to first; returns the loss, then the student and teacher gradients when `gradients`.
std::vector<float> run_in_tasks(SoftTargetArgs args, std::int64_t task_rows, bool gradients) {
  const std::int64_t n = args.rows * args.cols;
  std::vector<float> loss(1), gs(gradients ? n : 0), gt(gradients ? n : 0);
  std::vector<unsigned char> workspace(soft_target_workspace_bytes(args));
  args.loss = loss.data();
  args.grad_student = gradients ? gs.data() : nullptr;
  args.grad_teacher = gradients ? gt.data() : nullptr;
  args.workspace = workspace.data();
  CpuExecutor executor;
  executor.parallel_for = [&](std::int64_t rows, std::int64_t, const CpuExecutor::Body& body) {
    for (std::int64_t b = rows; b > 0; b -= task_rows) body(std::max<std::int64_t>(0, b - task_rows), b);
  };
  soft_target_loss_cpu(args, executor);
  loss.insert(loss.end(), gs.begin(), gs.end());
  loss.insert(loss.end(), gt.begin(), gt.end());
  return loss;
}

// Launcher arguments for contiguous float32 [R, V] student and teacher buffers.
SoftTargetArgs contiguous_args(const Buffer& s, const Buffer& t, std::int64_t R, std::int64_t V, double T) {
  SoftTargetArgs args;
  args.student = s.bytes.data();
  args.teacher = t.bytes.data();
  args.student_row_stride = args.teacher_row_stride = V;
  args.rows = R;
  args.cols = V;
  args.temperature = T;
  return args;
}

TEST(SoftTargetLauncher, TotalDoesNotDependOnHowRowsAreSplit) {
  const std::int64_t R = 97, V = 300;
  const Buffer s = Buffer::from(DType::Float32, random_logits(R, V, 1));
  const Buffer t = Buffer::from(DType::Float32, random_logits(R, V, 2));
  const SoftTargetArgs args = contiguous_args(s, t, R, V, 2.0);
  const std::vector<float> one = run_in_tasks(args, 1, false);
  EXPECT_EQ(one, run_in_tasks(args, 7, false));
  EXPECT_EQ(one, run_in_tasks(args, R, false));
}

// Short rows go 16 at a time on the CPU: a row's loss and gradients are the same bits whichever
// rows share its group (tasks of 1, 7 or all rows), ignored rows included: the same total (row
// losses summed in row order) and the same gradients.
TEST(SoftTargetLauncher, ShortRowsDoNotDependOnTheirGroup) {
  const std::int64_t R = 45, V = 10;
  const Buffer s = Buffer::from(DType::Float32, random_logits(R, V, 3));
  const Buffer t = Buffer::from(DType::Float32, random_logits(R, V, 4));
  std::vector<std::int64_t> labels(R);
  for (std::int64_t r = 0; r < R; ++r) labels[r] = r % 5 == 2 ? -100 : r % V;
  for (Divergence d : {Divergence::ForwardKL, Divergence::ReverseKL, Divergence::JSD, Divergence::MSE}) {
    SoftTargetArgs args = contiguous_args(s, t, R, V, 3.0);
    args.divergence = d;
    args.beta = 0.3;
    args.labels = labels.data();
    args.hard_scale = 0.5;
    const std::vector<float> whole = run_in_tasks(args, R, true);
    EXPECT_EQ(whole, run_in_tasks(args, 1, true)) << "divergence " << divergence_name(d);
    EXPECT_EQ(whole, run_in_tasks(args, 7, true)) << "divergence " << divergence_name(d);
  }
}

TEST(SoftTargetLauncher, RejectsBadArguments) {
  std::vector<float> x(8, 0.f);
  std::vector<unsigned char> workspace(256);
  float loss = 0;
  SoftTargetArgs args;
  args.student = args.teacher = x.data();
  args.student_row_stride = args.teacher_row_stride = 4;
  args.rows = 2;
  args.cols = 4;
  args.loss = &loss;
  args.workspace = workspace.data();
  SoftTargetArgs bad = args;
  bad.divergence = Divergence::JSD;
  bad.beta = 1.0;
  EXPECT_THROW(soft_target_loss_cpu(bad), std::invalid_argument);
  bad = args;
  bad.hard_scale = 1.0;  // without labels
  EXPECT_THROW(soft_target_loss_cpu(bad), std::invalid_argument);
  const std::int64_t labels[] = {0, 4};
  bad = args;
  bad.labels = labels;
  EXPECT_THROW(soft_target_loss_cpu(bad), std::invalid_argument);
  bad.temperature = -1;
  EXPECT_THROW(soft_target_loss_cpu(bad), std::invalid_argument);
}

}  // namespace
}  // namespace fusedkd::testing

// The soft-target launcher alone (no LibTorch), CPU and CUDA, against a float64 reference written
// from the spec's formulas: every divergence, dtype pairs, row lengths of every CUDA regime,
// labels with ignored rows, per-row losses (the suite's All instantiation; the reference and the
// check of a case are in soft_target_kernel_test_support.h); the KL loss gathered with the
// statistics (KLStats); the CPU launcher's results whatever its tasks, and its argument checks.
// The CUDA long-row regimes forced one by one, the CUDA row plan and error reporting:
// test_soft_target_cuda_regimes.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <vector>

#include "fusedkd/soft_target.h"
#include "fusedkd/soft_target_math.h"
#include "kernel_test_support.h"
#include "reference.h"
#include "soft_target_kernel_test_support.h"

namespace fusedkd::testing {
namespace {

TEST_P(SoftTargetKernel, LossAndGradientsMatchFloat64Reference) { check_against_reference(); }

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
  // Long 16-bit rows of one dtype (the CPU reads them without a converted copy) with labels, in
  // both KL directions, which the rotation above gives only short rows or no labels.
  for (Backend backend : {Backend::Cpu, Backend::Cuda})
    for (DType dtype : {DType::BFloat16, DType::Float16})
      for (Divergence d : {Divergence::ForwardKL, Divergence::ReverseKL})
        cases.push_back({backend, dtype, dtype, d, 0.0, 5, 2049, 2.0, true, false});
  // Labels at T = 1 and T = 2, where the CPU takes the cross-entropy's numerators from the soft
  // ones (the same and their squares), in rows with and without masked logits (the statistics
  // sweep with and without selects), for a divergence whose gradients recompute exponentials
  // (reverse KL) and one that keeps the numerators (soft MSE).
  for (Backend backend : {Backend::Cpu, Backend::Cuda})
    for (DType dtype : {DType::Float32, DType::Float64, DType::BFloat16})
      for (Divergence d : {Divergence::ReverseKL, Divergence::MSE})
        for (double T : {1.0, 2.0})
          for (double masked : {0.0, 0.05})
            cases.push_back({backend, dtype, dtype, d, 0.0, 5, 2049, T, true, false, Regime::Auto, masked});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(All, SoftTargetKernel, ::testing::ValuesIn(all_cases()), name_of);

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
  const KDRow<float> row = KDRow<float>::make(runs[0].stats, inv_t, reverse ? Divergence::ReverseKL : Divergence::ForwardKL,
                                               Mixture<float>::of(0.5));
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

// Launcher arguments for contiguous [R, V] student and teacher buffers (float32 unless set).
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

// Runs the CPU launcher on args (inputs, shape, loss options set) with a total loss and the
// gradients in these dtypes (the teacher's when teacher_gradient): the loss, then the student's
// gradient, then the teacher's.
std::vector<double> run_with_gradients(SoftTargetArgs args, DType gs_dtype, DType gt_dtype, bool teacher_gradient) {
  Buffer loss(DType::Float32, 1), gs(gs_dtype, args.rows * args.cols), gt(gt_dtype, args.rows * args.cols);
  args.loss = loss.bytes.data();
  args.grad_student = gs.bytes.data();
  args.grad_teacher = teacher_gradient ? gt.bytes.data() : nullptr;
  std::vector<unsigned char> workspace(soft_target_workspace_bytes(args));
  args.workspace = workspace.data();
  soft_target_loss_cpu(args);
  std::vector<double> out = loss.values();
  for (double v : gs.values()) out.push_back(v);
  if (teacher_gradient)
    for (double v : gt.values()) out.push_back(v);
  return out;
}

// Rows further apart than their length (logits sliced from a wider tensor), each side its own
// stride: the loss and gradients of the contiguous rows, for float32 and for 16-bit pairs, which
// the CPU reads where they lie.
TEST(SoftTargetLauncher, StridedRowsGiveTheContiguousResult) {
  const std::int64_t R = 9, V = 1500, pad_s = 3, pad_t = 7;
  for (DType dtype : {DType::Float32, DType::BFloat16, DType::Float16}) {
    const std::vector<double> sv = random_logits(R, V, 11), tv = random_logits(R, V, 12);
    std::vector<double> s_wide(R * (V + pad_s), 0.0), t_wide(R * (V + pad_t), 0.0);
    for (std::int64_t r = 0; r < R; ++r)
      for (std::int64_t j = 0; j < V; ++j) {
        s_wide[r * (V + pad_s) + j] = sv[r * V + j];
        t_wide[r * (V + pad_t) + j] = tv[r * V + j];
      }
    std::vector<std::int64_t> labels(R);
    for (std::int64_t r = 0; r < R; ++r) labels[r] = r % 4 == 3 ? -100 : (r * 131) % V;
    const auto run = [&](const std::vector<double>& s_values, const std::vector<double>& t_values,
                         std::int64_t s_stride, std::int64_t t_stride) {
      const Buffer s = Buffer::from(dtype, s_values), t = Buffer::from(dtype, t_values);
      SoftTargetArgs args = contiguous_args(s, t, R, V, 2.0);
      args.student_dtype = args.teacher_dtype = dtype;
      args.student_row_stride = s_stride;
      args.teacher_row_stride = t_stride;
      args.labels = labels.data();
      args.hard_scale = 0.5;
      return run_with_gradients(args, dtype, dtype, true);
    };
    const std::vector<double> contiguous = run(sv, tv, V, V), strided = run(s_wide, t_wide, V + pad_s, V + pad_t);
    EXPECT_LT(relative_error(strided, contiguous, 1e-6), 1e-5) << dtype_name(dtype);
  }
}

// float16_gradients_in_float32: float16 logits read as they are, their gradients written in
// float32, equal the gradients of the same values given as float32 (what the torch ops passed
// before: a float32 copy of the input). Long rows (the pair read in place, the kept-numerator
// path when only the student's gradient is wanted) and short rows (transposed), a float16 pair
// and a float16 student beside a float32 teacher, every divergence, with labels and ignored rows.
TEST(SoftTargetLauncher, Float16GradientsInFloat32MatchTheFloat32Copy) {
  const std::int64_t R = 21;
  for (const std::int64_t V : {std::int64_t{10}, std::int64_t{1500}}) {
    const std::vector<double> sv = Buffer::from(DType::Float16, random_logits(R, V, 21)).values();
    const std::vector<double> tv = Buffer::from(DType::Float16, random_logits(R, V, 22)).values();
    std::vector<std::int64_t> labels(R);
    for (std::int64_t r = 0; r < R; ++r) labels[r] = r % 5 == 4 ? -100 : (r * 37) % V;
    for (const DType teacher_dtype : {DType::Float16, DType::Float32}) {
      for (const Divergence d : {Divergence::ForwardKL, Divergence::ReverseKL, Divergence::JSD, Divergence::MSE}) {
        for (const bool teacher_gradient : {false, true}) {
          const auto run = [&](DType student_dtype, DType t_dtype, bool wide) {
            const Buffer s = Buffer::from(student_dtype, sv), t = Buffer::from(t_dtype, tv);
            SoftTargetArgs args = contiguous_args(s, t, R, V, 2.0);
            args.student_dtype = student_dtype;
            args.teacher_dtype = t_dtype;
            args.divergence = d;
            args.labels = labels.data();
            args.hard_scale = 0.5;
            args.float16_gradients_in_float32 = wide;
            return run_with_gradients(args, DType::Float32, DType::Float32, teacher_gradient);
          };
          const std::vector<double> wide = run(DType::Float16, teacher_dtype, true);
          // the float32 copy: the student always, the teacher too when its gradient is wanted
          const DType copied_teacher = teacher_gradient ? DType::Float32 : teacher_dtype;
          const std::vector<double> copy = run(DType::Float32, copied_teacher, false);
          const std::vector<double> wide_gradients(wide.begin() + 1, wide.end());
          const std::vector<double> copy_gradients(copy.begin() + 1, copy.end());
          EXPECT_LT(relative_error({wide[0]}, {copy[0]}), 1e-6) << "loss, V " << V;
          EXPECT_LT(relative_error(wide_gradients, copy_gradients), 1e-6)
              << "V " << V << " teacher " << dtype_name(teacher_dtype) << " divergence " << static_cast<int>(d)
              << " teacher gradient " << teacher_gradient;
        }
      }
    }
  }
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
// losses summed in row order) and the same gradients. Also with some rows masked (-inf in both
// logits at one class): a group holding one takes the sweeps with the exact-zero selects, a
// group without the sweeps without them, and a finite row's bits must not depend on which.
TEST(SoftTargetLauncher, ShortRowsDoNotDependOnTheirGroup) {
  const std::int64_t R = 45, V = 10;
  const double inf = std::numeric_limits<double>::infinity();
  for (bool masked : {false, true}) {
    std::vector<double> sv = random_logits(R, V, 3), tv = random_logits(R, V, 4);
    if (masked)
      for (std::int64_t r = 4; r < R; r += 9) sv[r * V + 7] = tv[r * V + 7] = -inf;
    const Buffer s = Buffer::from(DType::Float32, sv);
    const Buffer t = Buffer::from(DType::Float32, tv);
    std::vector<std::int64_t> labels(R);
    for (std::int64_t r = 0; r < R; ++r) labels[r] = r % 5 == 2 ? -100 : r % V == 7 ? 0 : r % V;
    for (Divergence d : {Divergence::ForwardKL, Divergence::ReverseKL, Divergence::JSD, Divergence::MSE}) {
      SoftTargetArgs args = contiguous_args(s, t, R, V, 3.0);
      args.divergence = d;
      args.beta = 0.3;
      args.labels = labels.data();
      args.hard_scale = 0.5;
      const std::vector<float> whole = run_in_tasks(args, R, true);
      EXPECT_EQ(whole, run_in_tasks(args, 1, true)) << "divergence " << divergence_name(d) << " masked " << masked;
      EXPECT_EQ(whole, run_in_tasks(args, 7, true)) << "divergence " << divergence_name(d) << " masked " << masked;
    }
  }
}

// A logit masked with the dtype's lowest finite value rather than -inf (padded vocabularies do
// this): at T < 1 its log-ratio to the other side overflows to -inf while its weight underflows to
// 0, and the KL share must be 0, not 0 * -inf = NaN; the loss and gradients equal those of the
// same row masked with -inf. Long rows (the statistics sweep without selects) and short rows,
// forward KL (teacher masked) and reverse KL (student masked).
TEST(SoftTargetLauncher, LowestFiniteMaskWeighsNothingAsMinusInfinityDoes) {
  const std::int64_t R = 3;
  const float lowest = std::numeric_limits<float>::lowest(), inf = std::numeric_limits<float>::infinity();
  for (const std::int64_t V : {std::int64_t{10}, std::int64_t{64}})
    for (Divergence d : {Divergence::ForwardKL, Divergence::ReverseKL}) {
      std::vector<double> sv = random_logits(R, V, 5), tv = random_logits(R, V, 6);
      std::vector<double>& masked = d == Divergence::ForwardKL ? tv : sv;
      const auto run = [&](float mask) {
        for (std::int64_t r = 0; r < R; ++r) masked[r * V + 3] = mask;
        const Buffer s = Buffer::from(DType::Float32, sv);
        const Buffer t = Buffer::from(DType::Float32, tv);
        SoftTargetArgs args = contiguous_args(s, t, R, V, 0.5);
        args.divergence = d;
        return run_in_tasks(args, R, true);
      };
      const std::vector<float> with_lowest = run(lowest), with_inf = run(-inf);
      for (float x : with_lowest) ASSERT_TRUE(std::isfinite(x)) << divergence_name(d) << " V " << V;
      EXPECT_EQ(with_lowest, with_inf) << divergence_name(d) << " V " << V;
    }
}

// The other side padded with the lowest finite value (forward KL: the student; reverse KL: the
// teacher), where its weight is not 0: the log-ratio over T overflows at T < 1 and the loss is
// +inf, on short rows (the scalar kl_cross_term) and long rows (the AVX-512 statistics loop where
// the processor has it) alike; at T = 2 the same log-ratio stays finite, and so does the loss.
TEST(SoftTargetLauncher, LowestFinitePaddingOnTheWeighedSideOverflowsAsTheScalarRuleDoes) {
  const std::int64_t R = 2;
  const float lowest = std::numeric_limits<float>::lowest(), inf = std::numeric_limits<float>::infinity();
  for (const std::int64_t V : {std::int64_t{10}, std::int64_t{64}})
    for (Divergence d : {Divergence::ForwardKL, Divergence::ReverseKL})
      for (const double T : {0.5, 2.0}) {
        std::vector<double> sv = random_logits(R, V, 7), tv = random_logits(R, V, 8);
        std::vector<double>& padded = d == Divergence::ForwardKL ? sv : tv;
        for (std::int64_t r = 0; r < R; ++r) padded[r * V + 3] = lowest;
        const Buffer s = Buffer::from(DType::Float32, sv);
        const Buffer t = Buffer::from(DType::Float32, tv);
        SoftTargetArgs args = contiguous_args(s, t, R, V, T);
        args.divergence = d;
        const float loss = run_in_tasks(args, R, false)[0];
        if (T < 1) EXPECT_EQ(loss, inf) << divergence_name(d) << " V " << V;
        else EXPECT_TRUE(std::isfinite(loss)) << divergence_name(d) << " V " << V << ": " << loss;
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

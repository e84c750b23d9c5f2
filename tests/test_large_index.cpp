// 64-bit indexing: inputs of more than 2^31 elements (the spec's "R * V above 2^31 works"), read by
// the soft-target and feature_mse launchers. On the CPU the inputs are anonymous mappings that are
// never written except for a few rows, so the untouched pages all read as the kernel's shared zero
// page: 8.6 GB of virtual input costs almost no memory. Only outputs that stay small are asked for
// (per-row losses, a total). On CUDA the inputs are real device allocations, zeroed.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "fusedkd/feature.h"
#include "fusedkd/soft_target.h"
#include "kernel_test_support.h"
#include "reference.h"

namespace fusedkd::testing {
namespace {

// A zero-filled float32 array of `count` elements on the backend, written only where asked.
class ZeroArray {
 public:
  ZeroArray(Backend backend, std::int64_t count) : backend_(backend), bytes_(static_cast<std::size_t>(count) * 4) {
    if (backend == Backend::Cpu) {
      void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      data_ = p == MAP_FAILED ? nullptr : p;
    } else {
#if FUSEDKD_WITH_CUDA
      if (cudaMalloc(&data_, bytes_) != cudaSuccess || cudaMemset(data_, 0, bytes_) != cudaSuccess) data_ = nullptr;
      cudaGetLastError();
#endif
    }
  }
  ~ZeroArray() {
    if (!data_) return;
    if (backend_ == Backend::Cpu) munmap(data_, bytes_);
#if FUSEDKD_WITH_CUDA
    else cudaFree(data_);
#endif
  }
  ZeroArray(const ZeroArray&) = delete;
  ZeroArray& operator=(const ZeroArray&) = delete;

  bool ok() const { return data_ != nullptr; }
  const void* data() const { return data_; }
  void write(std::int64_t offset, const std::vector<float>& values) {
    float* at = static_cast<float*>(data_) + offset;
    if (backend_ == Backend::Cpu) {
      std::memcpy(at, values.data(), values.size() * 4);
      return;
    }
#if FUSEDKD_WITH_CUDA
    ASSERT_EQ(cudaMemcpy(at, values.data(), values.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
#endif
  }

 private:
  Backend backend_;
  std::size_t bytes_;
  void* data_ = nullptr;
};

// Logits rounded to float32, as the kernels read them, kept as doubles for the reference.
std::vector<double> float_logits(std::int64_t cols, std::uint64_t seed) {
  const std::vector<double> x = random_logits(1, cols, seed, 3.0);
  std::vector<double> rounded(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) rounded[i] = static_cast<float>(x[i]);
  return rounded;
}

std::vector<float> as_float(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

class LargeIndex : public BackendTest {};

// R * V = 2^31 + 3 * 2^15 elements per input; rows 0 and the last three are filled, the others are
// zero (uniform distributions for both models: a per-row KL of exactly 0).
TEST_P(LargeIndex, SoftTargetRowsBeyond2To31) {
  const Backend backend = GetParam();
  const std::int64_t V = std::int64_t{1} << 15, R = (std::int64_t{1} << 16) + 3;
  ASSERT_GT(R * V, std::int64_t{1} << 31);
  ZeroArray s(backend, R * V), t(backend, R * V);
  if (!s.ok() || !t.ok()) GTEST_SKIP() << "skipped: cannot map 2 x " << R * V * 4 / (1 << 20) << " MiB";
  const std::vector<std::int64_t> filled = {0, R - 3, R - 2, R - 1};
  std::vector<std::vector<double>> rows_s, rows_t;
  for (std::int64_t r : filled) {
    rows_s.push_back(float_logits(V, 100 + r));
    rows_t.push_back(float_logits(V, 200 + r));
    s.write(r * V, as_float(rows_s.back()));
    t.write(r * V, as_float(rows_t.back()));
  }
  Buffer loss(DType::Float32, R);
  loss.poison();
  SoftTargetArgs args;
  args.student_row_stride = args.teacher_row_stride = V;
  args.rows = R;
  args.cols = V;
  args.temperature = 2.0;
  args.divergence = Divergence::ForwardKL;
  args.per_row_loss = true;
  run_on_backend(backend, {}, {&loss}, soft_target_workspace_bytes(args),
                 [&](const auto&, const auto& out, void* workspace, void* stream) {
                   SoftTargetArgs a = args;
                   a.student = s.data();
                   a.teacher = t.data();
                   a.loss = out[0];
                   a.workspace = workspace;
                   FUSEDKD_ON_BACKEND(backend, stream, soft_target_loss_cpu(a),
                                      soft_target_loss_cuda(a, FUSEDKD_TEST_STREAM(stream)));
                 });
  for (std::size_t i = 0; i < filled.size(); ++i) {
    const std::vector<double> lq = softmax_reference(rows_s[i], 1, V, 2.0, true);
    const std::vector<double> lp = softmax_reference(rows_t[i], 1, V, 2.0, true);
    double kl = 0;
    for (std::int64_t j = 0; j < V; ++j) kl += std::exp(lp[j]) * (lp[j] - lq[j]);
    EXPECT_NEAR(loss.get(filled[i]), kl, 1e-5 * std::max(1.0, kl)) << "row " << filled[i];
  }
  double others = 0;
  for (std::int64_t r = 1; r < R - 3; ++r) others = std::max(others, std::abs(loss.get(r)));
  EXPECT_LT(others, 1e-6);  // NaN fails too
}

// 2^31 + 5 elements, non-zero at both ends only: the total is known exactly.
TEST_P(LargeIndex, FeatureMseBeyond2To31) {
  const Backend backend = GetParam();
  const std::int64_t numel = (std::int64_t{1} << 31) + 5;
  ZeroArray s(backend, numel), t(backend, numel);
  if (!s.ok() || !t.ok()) GTEST_SKIP() << "skipped: cannot map 2 x " << numel * 4 / (1 << 20) << " MiB";
  s.write(0, {1.0f, 2.0f});
  t.write(0, {0.5f, -1.0f});
  s.write(numel - 3, {3.0f, 0.0f, -2.0f});
  t.write(numel - 3, {1.0f, 0.25f, 2.0f});
  const double expected = 0.25 + 9.0 + 4.0 + 0.0625 + 16.0;
  Buffer loss(DType::Float32, 1);
  FeatureMseArgs args;
  args.numel = numel;
  run_on_backend(backend, {}, {&loss}, feature_mse_workspace_bytes(args),
                 [&](const auto&, const auto& out, void* workspace, void* stream) {
                   FeatureMseArgs a = args;
                   a.student = s.data();
                   a.teacher = t.data();
                   a.loss = out[0];
                   a.workspace = workspace;
                   FUSEDKD_ON_BACKEND(backend, stream, feature_mse_cpu(a),
                                      feature_mse_cuda(a, FUSEDKD_TEST_STREAM(stream)));
                 });
  EXPECT_NEAR(loss.get(0), expected, 1e-6 * expected);
}

INSTANTIATE_TEST_SUITE_P(All, LargeIndex, ::testing::Values(Backend::Cpu, Backend::Cuda), backend_test_name);

}  // namespace
}  // namespace fusedkd::testing

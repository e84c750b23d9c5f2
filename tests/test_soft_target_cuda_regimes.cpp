// The soft-target CUDA launcher's kernels for rows beyond the register tiles, each forced in turn
// (the SoftTargetKernel suite's CudaRegimes instantiation: the same check against the float64
// reference as test_soft_target_kernels.cpp, from soft_target_kernel_test_support.h); the regime
// the launcher plans for each row length on the device it runs on (SoftTargetCudaPlan); an error
// left pending before a launch is reported, never cleared away (SoftTargetCudaErrors).
// scripts/gpu_check.sh also runs this file's tests with the kernels built for sm_80 alone.
#include <gtest/gtest.h>

#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fusedkd/build_config.h"
#include "fusedkd/soft_target.h"
#include "kernel_test_support.h"
#include "soft_target_kernel_test_support.h"

namespace fusedkd::testing {
namespace {

TEST_P(SoftTargetKernel, LossAndGradientsMatchFloat64Reference) { check_against_reference(); }

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
// float16_gradients_in_float32 is the CPU launcher's: the CUDA launcher says so before it touches
// the device (no GPU needed), rather than writing float32 into a buffer sized for float16.
TEST(SoftTargetCudaErrors, RejectsFloat32GradientsOfFloat16) {
  fusedkd::testing::Float16GradientRequest request;
  SoftTargetArgs args;
  args.student = args.teacher = request.x.data();
  args.student_dtype = args.teacher_dtype = DType::Float16;
  args.student_row_stride = args.teacher_row_stride = 4;
  args.rows = 2;
  args.cols = 4;
  EXPECT_THROW(soft_target_loss_cuda(request.ask(args), nullptr), std::invalid_argument);
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

}  // namespace
}  // namespace fusedkd::testing

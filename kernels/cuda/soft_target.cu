// CUDA soft-target losses (kl_div, jsd, soft_mse, kd_loss): the host side. It plans how a row runs
// (the kernels are in soft_target_kernels.cuh, their shared row pieces in soft_target_rows.cuh)
// and launches, one fused pass, no host synchronisation.
//
// Launch sequence on one stream:
//   1. (labels, dividing by the valid rows) valid_row_weight_kernel: one block counts the rows
//      whose label is not ignore_index, in a fixed order, and stores the weight 1/n of one;
//   2. the row kernel for the row length (docs/architecture.md): a register tile when the row
//      fits (each row read from device memory once: 3X bytes with a student gradient); else on
//      chip when the row fits in a block's shared memory or a cluster's (read once, 3X); else
//      streaming (two sweeps over device memory for KL, three for JSD and MSE). Per row it writes
//      the row's loss into the workspace (or the per-row output) and, when asked, the gradients
//      already multiplied by the row's weight;
//   3. (scalar loss) sum_row_losses_kernel: one block adds the row losses in a fixed order.
// No floating-point atomics anywhere: the result is the same run to run. A label outside
// [0, V) that is not ignore_index makes its row's loss and gradient NaN (checking it on the
// host would need a synchronisation).
#include <atomic>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <tuple>

#include "soft_target_kernels.cuh"
#include "../validate.h"
#include "../workspace.h"

namespace fusedkd::cuda {
namespace {

// ---------------------------------------------------------------- planning and launch

// Two register tiles and this math: at 512 threads (128 registers each) ptxas spills, so the
// tiles stop at 256 threads and rows up to 4093 float32 elements are held in registers
// (docs/architecture.md).
constexpr int kMaxTileBlock = 256;

std::atomic<bool> g_streaming_only{false};
std::atomic<int> g_min_blocks_per_row{1};
std::atomic<bool> g_fail_cluster_queries{false};

// A launch of `grid` blocks of `block` threads in clusters of `cluster_blocks`, with `shared_bytes`
// of dynamic shared memory: the configuration cudaLaunchKernelEx and the occupancy query take.
struct ClusterLaunch {
  cudaLaunchAttribute cluster;
  cudaLaunchConfig_t config;
  ClusterLaunch(unsigned int grid, int block, std::size_t shared_bytes, cudaStream_t stream, int cluster_blocks)
      : cluster{}, config{} {
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = static_cast<unsigned int>(cluster_blocks);
    cluster.val.clusterDim.y = 1;
    cluster.val.clusterDim.z = 1;
    config.gridDim = dim3(grid);
    config.blockDim = dim3(static_cast<unsigned int>(block));
    config.dynamicSmemBytes = shared_bytes;
    config.stream = stream;
    config.attrs = &cluster;
    config.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;  // config points at cluster
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// How the on-chip kernel runs rows of a given length on the current device; blocks_per_row 0:
// it cannot (the row does not fit, or the policy says streaming).
struct OnChipPlan {
  int blocks_per_row = 0;
  int slice_chunks = 0;
  std::size_t shared_bytes = 0;
  int resident = 0;  // blocks (one cluster) or clusters that fit on the device at once
};

template <typename TS, typename TT>
auto onchip_kernel() {
  return soft_target_onchip_kernel<TS, TT, kStreamingBlock<typename PairTraits<TS, TT>::Acc>>;
}

// The fewest blocks per row (1, or a cluster of 2, 4, 8 or 16 on sm_90 and later) whose slices
// fit in shared memory with at least one of them resident, at least `min_blocks` of them.
template <typename TS, typename TT>
OnChipPlan compute_onchip_plan(std::int64_t cols, int min_blocks, bool fail_cluster_queries) {
  constexpr int kBlock = kStreamingBlock<typename PairTraits<TS, TT>::Acc>;
  constexpr int N = PairTraits<TS, TT>::kWidth;
  const auto kernel = onchip_kernel<TS, TT>();
  const DeviceLimits& device = device_limits();
  cudaFuncAttributes attributes;
  FUSEDKD_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  if (attributes.sharedSizeBytes >= device.shared_per_block_optin) return {};
  const std::size_t budget = device.shared_per_block_optin - attributes.sharedSizeBytes;
  // The same value every time (no race between threads launching with different sizes).
  FUSEDKD_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(budget)));
  const std::int64_t chunks = max_chunks_per_row(cols, N);
  const int max_blocks = detail::max_cluster_blocks(device.major, attributes.ptxVersion, attributes.binaryVersion);
  for (int blocks = 1; blocks <= max_blocks; blocks *= 2) {
    if (blocks < min_blocks) continue;
    OnChipPlan plan;
    plan.blocks_per_row = blocks;
    plan.slice_chunks = static_cast<int>((chunks + blocks - 1) / blocks);
    plan.shared_bytes = OnChipLayout<TS, TT>::bytes(plan.slice_chunks);
    if (plan.shared_bytes > budget) continue;
    if (blocks == 1) {
      FUSEDKD_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&plan.resident, kernel, kBlock, plan.shared_bytes));
      plan.resident *= device.multiprocessors;
    } else {
      if (blocks > 8) {
        FUSEDKD_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      }
      const ClusterLaunch launch(static_cast<unsigned int>(blocks), kBlock, plan.shared_bytes, nullptr, blocks);
      const cudaLaunchConfig_t& config = launch.config;
      const cudaError_t pending = cudaPeekAtLastError();
      const cudaError_t queried = fail_cluster_queries ? cudaErrorInvalidConfiguration
                                                       : cudaOccupancyMaxActiveClusters(&plan.resident, kernel, &config);
      if (queried != cudaSuccess) {
        (void)cudaGetLastError();  // clears the query's error (and any earlier one, reported next)
        if (detail::on_occupancy_query_failure(pending != cudaSuccess) == detail::QueryFailure::ReportPendingError)
          FUSEDKD_CUDA_CHECK(pending);  // an earlier launch's error: reported once, never swallowed
        // Else the query's own failure: this cluster size cannot run here; try the next.
        plan.resident = 0;
      }
    }
    if (plan.resident > 0) return plan;
  }
  return {};
}

// compute_onchip_plan under the current policy, remembered per device, row length and policy: its
// driver queries (function attributes, occupancy) run once, not on every launch.
template <typename TS, typename TT>
OnChipPlan plan_onchip(std::int64_t cols) {
  if (g_streaming_only.load()) return {};
  const int min_blocks = g_min_blocks_per_row.load();
  const bool fail_queries = g_fail_cluster_queries.load();
  int device = 0;
  FUSEDKD_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::tuple<int, std::int64_t, int, bool>, OnChipPlan> plans;
  const auto key = std::make_tuple(device, cols, min_blocks, fail_queries);
  std::lock_guard<std::mutex> lock(mutex);
  const auto found = plans.find(key);
  if (found != plans.end()) return found->second;
  const OnChipPlan plan = compute_onchip_plan<TS, TT>(cols, min_blocks, fail_queries);
  plans.emplace(key, plan);
  return plan;
}

template <typename TS, typename TT>
struct LossLaunch {
  using Acc = typename PairTraits<TS, TT>::Acc;
  const Params<Acc>& p;
  cudaStream_t stream;
  template <int THREADS, int BLOCK, int ITEMS>
  void tile() const {
    soft_target_tile_kernel<TS, TT, THREADS, BLOCK, ITEMS>
        <<<grid_size(p.rows, BLOCK / THREADS, BLOCK), BLOCK, 0, stream>>>(p);
  }
  // Rows beyond the register tiles: on chip when they fit, else streaming.
  void long_rows() const {
    constexpr int kBlock = kStreamingBlock<Acc>;
    const OnChipPlan plan = plan_onchip<TS, TT>(p.cols);
    if (plan.blocks_per_row == 0) {
      soft_target_streaming_kernel<TS, TT, kBlock><<<grid_size(p.rows, 1, kBlock), kBlock, 0, stream>>>(p);
      return;
    }
    // One wave: the kernel loops over the rows, a row per block or cluster.
    const std::int64_t units = p.rows < plan.resident ? p.rows : plan.resident;
    const unsigned int grid = static_cast<unsigned int>(units * plan.blocks_per_row);
    const auto kernel = onchip_kernel<TS, TT>();
    if (plan.blocks_per_row == 1) {
      kernel<<<grid, kBlock, plan.shared_bytes, stream>>>(p, plan.slice_chunks);
      return;
    }
    const ClusterLaunch launch(grid, kBlock, plan.shared_bytes, stream, plan.blocks_per_row);
    FUSEDKD_CUDA_CHECK(cudaLaunchKernelEx(&launch.config, kernel, p, plan.slice_chunks));
  }
};

// The kernel LossLaunch would choose, without launching it.
template <typename TS, typename TT>
struct PlanOnly {
  std::int64_t cols;
  detail::CudaRowPlan* plan;
  template <int THREADS, int BLOCK, int ITEMS>
  void tile() const {
    *plan = {detail::CudaRowPlan::Kind::RegisterTile, 1};
  }
  void long_rows() const {
    const OnChipPlan onchip = plan_onchip<TS, TT>(cols);
    if (onchip.blocks_per_row == 0) {
      *plan = {detail::CudaRowPlan::Kind::Streaming, 1};
    } else {
      *plan = {detail::CudaRowPlan::Kind::OnChip, onchip.blocks_per_row};
    }
  }
};

template <typename TS, typename TT>
void launch_loss(const SoftTargetArgs& a, cudaStream_t stream) {
  using Acc = typename PairTraits<TS, TT>::Acc;
  constexpr int N = PairTraits<TS, TT>::kWidth;
  Acc* row_losses = a.per_row_loss ? static_cast<Acc*>(a.loss) : static_cast<Acc*>(a.workspace);
  // The workspace: [rows] row losses, then the weight of a valid row (kernels/workspace.h).
  Acc* weight_on_device = nullptr;
  if (a.labels && a.divide_by_valid_rows && !a.per_row_loss) {
    const std::size_t offset = detail::soft_target_weight_offset(a.rows, sizeof(Acc));
    weight_on_device = reinterpret_cast<Acc*>(static_cast<unsigned char*>(a.workspace) + offset);
    valid_row_weight_kernel<Acc><<<1, kReduceBlock, 0, stream>>>(a.labels, a.rows, a.ignore_index, weight_on_device);
  }
  Params<Acc> p;
  static_cast<Temperature<Acc>&>(p) = Temperature<Acc>::of(a.temperature);
  p.student = a.student;
  p.teacher = a.teacher;
  p.student_row_stride = a.student_row_stride;
  p.teacher_row_stride = a.teacher_row_stride;
  p.rows = a.rows;
  p.cols = static_cast<int>(a.cols);
  p.divergence = a.divergence;
  p.mixture = Mixture<Acc>::of(a.beta);
  p.labels = a.labels;
  p.ignore_index = a.ignore_index;
  p.soft_scale = static_cast<Acc>(a.soft_scale);
  p.hard_scale = static_cast<Acc>(a.hard_scale);
  p.hard = a.labels != nullptr && a.hard_scale != 0.0;
  p.row_weight_on_device = weight_on_device;
  p.row_weight = a.per_row_loss ? Acc(1) : kd_row_weight<Acc>(a.divide_by_valid_rows, static_cast<Acc>(a.rows));
  p.row_losses = row_losses;
  p.grad_student = a.grad_student;
  p.grad_teacher = a.grad_teacher;
  dispatch_row_length<N, kElementsPerThread, kMaxTileBlock>(p.cols, LossLaunch<TS, TT>{p, stream});
  if (!a.per_row_loss) sum_row_losses_kernel<Acc><<<1, kReduceBlock, 0, stream>>>(p, static_cast<Acc*>(a.loss));
}

}  // namespace
}  // namespace fusedkd::cuda

namespace fusedkd {

namespace detail {

CudaRowPlan soft_target_cuda_row_plan(DType student, DType teacher, std::int64_t cols) {
  if (cols < 1 || cols > std::numeric_limits<int>::max())
    throw std::invalid_argument("fusedkd: soft_target_cuda_row_plan: cols must be in [1, 2^31)");
  CudaRowPlan plan;
  cuda::dispatch_pair(student, teacher, "soft_target_cuda_row_plan", [&](auto s_tag, auto t_tag) {
    using TS = typename decltype(s_tag)::type;
    using TT = typename decltype(t_tag)::type;
    constexpr int N = cuda::PairTraits<TS, TT>::kWidth;
    cuda::dispatch_row_length<N, cuda::kElementsPerThread, cuda::kMaxTileBlock>(
        static_cast<int>(cols), cuda::PlanOnly<TS, TT>{cols, &plan});
  });
  return plan;
}

void set_cuda_long_row_policy(const CudaLongRowPolicy& policy) {
  if (policy.min_blocks_per_row < 1)
    throw std::invalid_argument("fusedkd: set_cuda_long_row_policy: min_blocks_per_row must be at least 1");
  cuda::g_streaming_only.store(policy.streaming_only);
  cuda::g_min_blocks_per_row.store(policy.min_blocks_per_row);
  cuda::g_fail_cluster_queries.store(policy.fail_cluster_queries);
}

CudaLongRowPolicy cuda_long_row_policy() {
  return {cuda::g_streaming_only.load(), cuda::g_min_blocks_per_row.load(), cuda::g_fail_cluster_queries.load()};
}

}  // namespace detail

void soft_target_loss_cuda(const SoftTargetArgs& args, CUstream_st* stream) {
  detail::validate(args);
  detail::check_cuda_gradient_dtypes(args.float16_gradients_in_float32, "soft_target_loss_cuda");
  if (args.rows == 0) {
    if (!args.per_row_loss) {
      FUSEDKD_CUDA_CHECK(cudaMemsetAsync(args.loss, 0, soft_target_uses_double(args) ? 8 : 4, stream));
    }
    return;
  }
  cuda::dispatch_pair(args.student_dtype, args.teacher_dtype, "soft_target_loss_cuda", [&](auto s_tag, auto t_tag) {
    cuda::launch_loss<typename decltype(s_tag)::type, typename decltype(t_tag)::type>(args, stream);
  });
  FUSEDKD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fusedkd

// CUDA soft-target losses (kl_div, jsd, soft_mse, kd_loss), one fused pass, no host sync.
//
// Launch sequence on one stream:
//   1. (labels, dividing by the valid rows) count_valid_rows_kernel: one block counts the rows
//      whose label is not ignore_index into the workspace, in a fixed order;
//   2. the row kernel: a register tile when the row fits (both rows read from device memory once:
//      3X bytes with a student gradient), else a block per row that sweeps the row three times
//      (statistics, sums, gradients; the first two reads may be served by L2). Per row it writes
//      the row's loss into the workspace (or the per-row output) and, when asked, the gradients
//      already multiplied by the row's weight (1/n);
//   3. (scalar loss) sum_row_losses_kernel: one block adds the row losses in a fixed order.
// No floating-point atomics anywhere: the result is the same run to run. A label outside
// [0, V) that is not ignore_index makes its row's loss and gradient NaN (checking it on the
// host would need a synchronisation).
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "fusedkd/soft_target_math.h"
#include "row_tile.cuh"
#include "../validate.h"

namespace fusedkd::cuda {
namespace {

// Threads of the long-row kernel: 512, or 256 for double (more registers per thread).
template <typename Acc>
constexpr int kStreamingBlock = std::is_same_v<Acc, double> ? 256 : 512;
constexpr int kReduceBlock = 1024;

template <typename Acc>
struct Params {
  const void* student;
  const void* teacher;
  std::int64_t student_row_stride;
  std::int64_t teacher_row_stride;
  std::int64_t rows;
  int cols;
  Acc inv_t;
  Acc scale_log2;
  Divergence divergence;
  Acc beta;
  const std::int64_t* labels;
  std::int64_t ignore_index;
  Acc soft_scale;
  Acc hard_scale;
  bool hard;                    // labels and hard_scale != 0
  // Weight of a valid row in the total: *row_weight_on_device when the valid rows are counted on
  // the device (labels), else row_weight (known on the host). Division stays out of the row
  // kernels.
  const Acc* row_weight_on_device;
  Acc row_weight;
  bool per_row_loss;
  Acc* row_losses;              // per-row output or workspace
  void* grad_student;
  void* grad_teacher;
};

// The weight of a valid row in the total (1/n, or 1).
template <typename Acc>
__device__ __forceinline__ Acc row_weight(const Params<Acc>& p) {
  return p.row_weight_on_device ? *p.row_weight_on_device : p.row_weight;
}

// Label of a row: -1 when there are no labels; `valid` false for ignore_index; `bad` for labels
// outside [0, cols).
struct RowLabel {
  std::int64_t label;
  bool valid;
  bool bad;
};

template <typename Acc>
__device__ __forceinline__ RowLabel row_label(const Params<Acc>& p, std::int64_t row) {
  if (!p.labels) return {-1, true, false};
  const std::int64_t y = p.labels[row];
  if (y == p.ignore_index) return {y, false, false};
  return {y, true, y < 0 || y >= p.cols};
}

template <typename Acc>
__device__ __forceinline__ Acc quiet_nan() {
  return std::numeric_limits<Acc>::quiet_NaN();
}

// The row's contribution to the total (or its per-row loss); NaN for a label outside [0, V).
template <typename Acc, typename TS>
__device__ __forceinline__ Acc row_value(const Params<Acc>& p, const KDRow<Acc>& kd, const KDSums<Acc>& sums,
                                         const RowLabel& y, const TS* s_row) {
  const Acc soft = p.soft_scale * sums.loss;
  if (!p.hard) return soft;
  if (y.bad) return quiet_nan<Acc>();
  return soft + p.hard_scale * kd.cross_entropy(static_cast<Acc>(to_acc(s_row[y.label])));
}

// The student gradient of element j from its soft gradient: weighted, plus the cross-entropy's.
template <typename Acc>
__device__ __forceinline__ Acc student_gradient(Acc soft_gradient, Acc s, std::int64_t j, const KDRow<Acc>& kd,
                                                const RowLabel& y, Acc ws, Acc wh) {
  if (wh == Acc(0)) return ws * soft_gradient;
  if (y.bad) return quiet_nan<Acc>();
  return ws * soft_gradient + wh * (kd.hard_prob(s) - (j == y.label ? Acc(1) : Acc(0)));
}

// Calls fn(std::integral_constant<Divergence, D>{}) for the row's divergence, so that each
// element loop is compiled once per divergence with no branch inside it.
template <typename Fn>
__device__ __forceinline__ void with_divergence(Divergence d, Fn&& fn) {
  switch (d) {
    case Divergence::ForwardKL: return fn(std::integral_constant<Divergence, Divergence::ForwardKL>{});
    case Divergence::ReverseKL: return fn(std::integral_constant<Divergence, Divergence::ReverseKL>{});
    case Divergence::JSD: return fn(std::integral_constant<Divergence, Divergence::JSD>{});
    case Divergence::MSE: return fn(std::integral_constant<Divergence, Divergence::MSE>{});
  }
}

// ---------------------------------------------------------------- row kernels

template <typename TS, typename TT>
struct PairTraits {
  using Acc = std::conditional_t<std::is_same_v<TS, double> || std::is_same_v<TT, double>, double, float>;
  static constexpr int kWidth = 16 / static_cast<int>(sizeof(TS) > sizeof(TT) ? sizeof(TS) : sizeof(TT));
};

template <typename TS, typename TT, int THREADS, int BLOCK, int ITEMS>
__global__ void __launch_bounds__(BLOCK, 1) soft_target_tile_kernel(Params<typename PairTraits<TS, TT>::Acc> p) {
  using Acc = typename PairTraits<TS, TT>::Acc;
  constexpr int N = PairTraits<TS, TT>::kWidth;
  using Tile = RowTile<Acc, THREADS, ITEMS, N>;
  using StatsReduce = RowAllReduce<KDStats<Acc>, THREADS, BLOCK>;
  using SumsReduce = RowAllReduce<KDSums<Acc>, THREADS, BLOCK>;
  __shared__ typename StatsReduce::TempStorage stats_storage;
  __shared__ typename SumsReduce::TempStorage sums_storage;
  const RowGroup<THREADS, BLOCK> g;
  const KDStatsMerge<Acc> merge{p.scale_log2};
  const Acc weight = row_weight(p);

  for (std::int64_t row = g.first_row(); row < p.rows; row += g.row_step()) {
    const TS* s_row = static_cast<const TS*>(p.student) + row * p.student_row_stride;
    const TT* t_row = static_cast<const TT*>(p.teacher) + row * p.teacher_row_stride;
    TS* gs_row = p.grad_student ? static_cast<TS*>(p.grad_student) + row * p.cols : nullptr;
    TT* gt_row = p.grad_teacher ? static_cast<TT*>(p.grad_teacher) + row * p.cols : nullptr;
    const int head = chunk_head<TS, N>(s_row);
    const RowLabel y = row_label(p, row);
    Tile xs, xt;
    if (!y.valid) {  // ignored row: no loss, zero gradients
#pragma unroll
      for (int i = 0; i < ITEMS; ++i)
#pragma unroll
        for (int k = 0; k < N; ++k) xs.v[i][k] = Acc(0);
      if (gs_row) xs.store(gs_row, p.cols, head, g.lane);
      if (gt_row) xs.store(gt_row, p.cols, head, g.lane);
      if (g.lane == 0) p.row_losses[row] = Acc(0);
      continue;
    }
    xs.load(s_row, p.cols, head, g.lane, neg_infinity<Acc>());
    xt.load(t_row, p.cols, head, g.lane, neg_infinity<Acc>());

    KDStats<Acc> local = kd_stats_empty<Acc>();
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
#pragma unroll
      for (int k = 0; k < N; ++k) {
        local.max_s = max_of(local.max_s, xs.v[i][k]);
        local.max_t = max_of(local.max_t, xt.v[i][k]);
      }
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
#pragma unroll
      for (int k = 0; k < N; ++k) {
        local.sum_s += softmax_sum_term(xs.v[i][k], local.max_s, p.scale_log2);
        local.sum_t += softmax_sum_term(xt.v[i][k], local.max_t, p.scale_log2);
        if (p.hard) local.sum_s_hard += softmax_sum_term(xs.v[i][k], local.max_s, Acc(kLog2e));
      }
    const KDStats<Acc> stats = StatsReduce::run(local, merge, stats_storage, g.group);
    const KDRow<Acc> kd = KDRow<Acc>::make(stats, p.inv_t, p.divergence, p.beta);

    KDSums<Acc> partial{Acc(0), Acc(0), Acc(0)};
    with_divergence(kd.divergence, [&](auto d) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i)
#pragma unroll
        for (int k = 0; k < N; ++k) kd_accumulate<decltype(d)::value>(kd, xs.v[i][k], xt.v[i][k], partial);
    });
    const KDSums<Acc> sums = SumsReduce::run(partial, KDSumsAdd<Acc>{}, sums_storage, g.group);

    if (g.lane == 0) p.row_losses[row] = row_value(p, kd, sums, y, s_row);
    if (gs_row || gt_row) {
      const Acc ws = weight * p.soft_scale;
      const Acc wh = p.hard ? weight * p.hard_scale : Acc(0);
      with_divergence(kd.divergence, [&](auto d) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i)
#pragma unroll
        for (int k = 0; k < N; ++k) {
          Acc gs, gt;
          kd_soft_gradients<decltype(d)::value>(kd, sums, xs.v[i][k], xt.v[i][k], gs, gt);
          xs.v[i][k] = student_gradient(gs, xs.v[i][k], Tile::element(g.lane, i, k, head), kd, y, ws, wh);
          xt.v[i][k] = ws * gt;
        }
      });
      if (gs_row) xs.store(gs_row, p.cols, head, g.lane);
      if (gt_row) xt.store(gt_row, p.cols, head, g.lane);
    }
  }
}

template <typename TS, typename TT, int BLOCK>
__global__ void __launch_bounds__(BLOCK) soft_target_streaming_kernel(Params<typename PairTraits<TS, TT>::Acc> p) {
  using Acc = typename PairTraits<TS, TT>::Acc;
  constexpr int N = PairTraits<TS, TT>::kWidth;
  using StatsReduce = RowAllReduce<KDStats<Acc>, BLOCK, BLOCK>;
  using SumsReduce = RowAllReduce<KDSums<Acc>, BLOCK, BLOCK>;
  __shared__ typename StatsReduce::TempStorage stats_storage;
  __shared__ typename SumsReduce::TempStorage sums_storage;
  const KDStatsMerge<Acc> merge{p.scale_log2};
  const Acc weight = row_weight(p);

  for (std::int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const TS* s_row = static_cast<const TS*>(p.student) + row * p.student_row_stride;
    const TT* t_row = static_cast<const TT*>(p.teacher) + row * p.teacher_row_stride;
    TS* gs_row = p.grad_student ? static_cast<TS*>(p.grad_student) + row * p.cols : nullptr;
    TT* gt_row = p.grad_teacher ? static_cast<TT*>(p.grad_teacher) + row * p.cols : nullptr;
    const int head = chunk_head<TS, N>(s_row);
    const bool t_vector_ok = chunk_head<TT, N>(t_row) == head;
    const bool gs_vector_ok = gs_row && chunk_head<TS, N>(gs_row) == head;
    const bool gt_vector_ok = gt_row && chunk_head<TT, N>(gt_row) == head;
    const std::int64_t chunks = (p.cols + head + N - 1) / N;
    const RowLabel y = row_label(p, row);
    if (!y.valid) {
      Acc zeros[N];
#pragma unroll
      for (int k = 0; k < N; ++k) zeros[k] = Acc(0);
      for (std::int64_t c = threadIdx.x; c < chunks; c += BLOCK) {
        if (gs_row) store_chunk<TS, N>(gs_row, p.cols, head, c, gs_vector_ok, zeros);
        if (gt_row) store_chunk<TT, N>(gt_row, p.cols, head, c, gt_vector_ok, zeros);
      }
      if (threadIdx.x == 0) p.row_losses[row] = Acc(0);
      continue;
    }

    KDStats<Acc> local = kd_stats_empty<Acc>();
    for (std::int64_t c = threadIdx.x; c < chunks; c += BLOCK) {
      Acc s[N], t[N];
      load_chunk<TS, N>(s_row, p.cols, head, c, true, /*streaming=*/false, s, neg_infinity<Acc>());
      load_chunk<TT, N>(t_row, p.cols, head, c, t_vector_ok, /*streaming=*/false, t, neg_infinity<Acc>());
      KDStats<Acc> chunk = kd_stats_empty<Acc>();
#pragma unroll
      for (int k = 0; k < N; ++k) {
        chunk.max_s = max_of(chunk.max_s, s[k]);
        chunk.max_t = max_of(chunk.max_t, t[k]);
      }
#pragma unroll
      for (int k = 0; k < N; ++k) {
        chunk.sum_s += softmax_sum_term(s[k], chunk.max_s, p.scale_log2);
        chunk.sum_t += softmax_sum_term(t[k], chunk.max_t, p.scale_log2);
        if (p.hard) chunk.sum_s_hard += softmax_sum_term(s[k], chunk.max_s, Acc(kLog2e));
      }
      local = merge(local, chunk);
    }
    const KDStats<Acc> stats = StatsReduce::run(local, merge, stats_storage, 0);
    const KDRow<Acc> kd = KDRow<Acc>::make(stats, p.inv_t, p.divergence, p.beta);

    KDSums<Acc> partial{Acc(0), Acc(0), Acc(0)};
    with_divergence(kd.divergence, [&](auto d) {
      for (std::int64_t c = threadIdx.x; c < chunks; c += BLOCK) {
        Acc s[N], t[N];
        load_chunk<TS, N>(s_row, p.cols, head, c, true, /*streaming=*/false, s, neg_infinity<Acc>());
        load_chunk<TT, N>(t_row, p.cols, head, c, t_vector_ok, /*streaming=*/false, t, neg_infinity<Acc>());
#pragma unroll
        for (int k = 0; k < N; ++k) kd_accumulate<decltype(d)::value>(kd, s[k], t[k], partial);
      }
    });
    const KDSums<Acc> sums = SumsReduce::run(partial, KDSumsAdd<Acc>{}, sums_storage, 0);

    if (threadIdx.x == 0) p.row_losses[row] = row_value(p, kd, sums, y, s_row);
    if (!gs_row && !gt_row) continue;
    const Acc ws = weight * p.soft_scale;
    const Acc wh = p.hard ? weight * p.hard_scale : Acc(0);
    with_divergence(kd.divergence, [&](auto d) {
    for (std::int64_t c = threadIdx.x; c < chunks; c += BLOCK) {
      Acc s[N], t[N];
      load_chunk<TS, N>(s_row, p.cols, head, c, true, /*streaming=*/true, s, neg_infinity<Acc>());
      load_chunk<TT, N>(t_row, p.cols, head, c, t_vector_ok, /*streaming=*/true, t, neg_infinity<Acc>());
#pragma unroll
      for (int k = 0; k < N; ++k) {
        Acc gs, gt;
        kd_soft_gradients<decltype(d)::value>(kd, sums, s[k], t[k], gs, gt);
        s[k] = student_gradient(gs, s[k], c * N - head + k, kd, y, ws, wh);
        t[k] = ws * gt;
      }
      if (gs_row) store_chunk<TS, N>(gs_row, p.cols, head, c, gs_vector_ok, s);
      if (gt_row) store_chunk<TT, N>(gt_row, p.cols, head, c, gt_vector_ok, t);
    }
    });
  }
}

// ---------------------------------------------------------------- small one-block kernels

// Counts the rows whose label is not ignore_index and stores the weight of one: 1/n (0 if none).
template <typename Acc>
__global__ void __launch_bounds__(kReduceBlock)
    valid_row_weight_kernel(const std::int64_t* labels, std::int64_t rows, std::int64_t ignore_index, Acc* weight) {
  using Reduce = cub::BlockReduce<long long, kReduceBlock>;
  __shared__ typename Reduce::TempStorage storage;
  long long local = 0;
  for (std::int64_t r = threadIdx.x; r < rows; r += kReduceBlock) local += labels[r] != ignore_index;
  const long long total = Reduce(storage).Sum(local);
  if (threadIdx.x == 0) *weight = kd_row_weight<Acc>(true, static_cast<Acc>(total));
}

template <typename Acc>
__global__ void __launch_bounds__(kReduceBlock) sum_row_losses_kernel(Params<Acc> p, Acc* loss) {
  using Reduce = cub::BlockReduce<Acc, kReduceBlock>;
  __shared__ typename Reduce::TempStorage storage;
  Acc local = 0;
  for (std::int64_t r = threadIdx.x; r < p.rows; r += kReduceBlock) local += p.row_losses[r];
  const Acc total = Reduce(storage).Sum(local);
  if (threadIdx.x == 0) *loss = total * row_weight(p);
}

template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK) scale_rows_kernel(T* grad, std::int64_t rows, int cols,
                                                           const acc_t<T>* factors, bool per_row) {
  using Acc = acc_t<T>;
  constexpr int N = Pack<T>::kWidth;
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const Acc factor = factors[per_row ? row : 0];
    if (factor == Acc(1)) continue;  // the common loss.backward(): no load, no store
    T* g = grad + row * cols;
    const int head = chunk_head<T, N>(g);
    const std::int64_t chunks = (cols + head + N - 1) / N;
    for (std::int64_t c = threadIdx.x; c < chunks; c += BLOCK) {
      Acc v[N];
      load_chunk<T, N>(g, cols, head, c, true, /*streaming=*/true, v, Acc(0));
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] *= factor;
      store_chunk<T, N>(g, cols, head, c, true, v);
    }
  }
}

// ---------------------------------------------------------------- dispatch

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
  void streaming() const {
    constexpr int kBlock = kStreamingBlock<Acc>;
    soft_target_streaming_kernel<TS, TT, kBlock><<<grid_size(p.rows, 1, kBlock), kBlock, 0, stream>>>(p);
  }
};

template <typename Fn>
void dispatch_pair(DType student, DType teacher, Fn&& fn) {
  using F32 = float;
  using F16 = __half;
  using B16 = __nv_bfloat16;
  if (student == teacher) {
    return dispatch_dtype(student, [&](auto tag) {
      using T = typename decltype(tag)::type;
      fn(TypeTag<T>{}, TypeTag<T>{});
    });
  }
  if (student == DType::Float32 && teacher == DType::BFloat16) return fn(TypeTag<F32>{}, TypeTag<B16>{});
  if (student == DType::BFloat16 && teacher == DType::Float32) return fn(TypeTag<B16>{}, TypeTag<F32>{});
  if (student == DType::Float32 && teacher == DType::Float16) return fn(TypeTag<F32>{}, TypeTag<F16>{});
  if (student == DType::Float16 && teacher == DType::Float32) return fn(TypeTag<F16>{}, TypeTag<F32>{});
  throw std::invalid_argument(std::string("fusedkd: the CUDA soft-target kernels do not take student ") +
                              dtype_name(student) + " with teacher " + dtype_name(teacher));
}

template <typename TS, typename TT>
void launch_loss(const SoftTargetArgs& a, cudaStream_t stream) {
  using Acc = typename PairTraits<TS, TT>::Acc;
  constexpr int N = PairTraits<TS, TT>::kWidth;
  Acc* row_losses = a.per_row_loss ? static_cast<Acc*>(a.loss) : static_cast<Acc*>(a.workspace);
  // The workspace: [rows] row losses, then (aligned) the weight of a valid row.
  Acc* weight_on_device = nullptr;
  if (a.labels && a.divide_by_valid_rows && !a.per_row_loss) {
    const std::size_t offset = ((static_cast<std::size_t>(a.rows) * sizeof(Acc) + 15) / 16) * 16;
    weight_on_device = reinterpret_cast<Acc*>(static_cast<unsigned char*>(a.workspace) + offset);
    valid_row_weight_kernel<Acc><<<1, kReduceBlock, 0, stream>>>(a.labels, a.rows, a.ignore_index, weight_on_device);
  }
  Params<Acc> p;
  p.student = a.student;
  p.teacher = a.teacher;
  p.student_row_stride = a.student_row_stride;
  p.teacher_row_stride = a.teacher_row_stride;
  p.rows = a.rows;
  p.cols = static_cast<int>(a.cols);
  p.inv_t = static_cast<Acc>(1.0 / a.temperature);
  p.scale_log2 = static_cast<Acc>(kLog2e / a.temperature);
  p.divergence = a.divergence;
  p.beta = static_cast<Acc>(a.beta);
  p.labels = a.labels;
  p.ignore_index = a.ignore_index;
  p.soft_scale = static_cast<Acc>(a.soft_scale);
  p.hard_scale = static_cast<Acc>(a.hard_scale);
  p.hard = a.labels != nullptr && a.hard_scale != 0.0;
  p.row_weight_on_device = weight_on_device;
  p.row_weight = a.per_row_loss ? Acc(1) : kd_row_weight<Acc>(a.divide_by_valid_rows, static_cast<Acc>(a.rows));
  p.per_row_loss = a.per_row_loss;
  p.row_losses = row_losses;
  p.grad_student = a.grad_student;
  p.grad_teacher = a.grad_teacher;
  // Two tiles and this math: at 512 threads (128 registers each) ptxas spills, so the tiles stop
  // at 256 threads and rows up to 4096 elements stay on chip (docs/architecture.md).
  dispatch_row_length<N, kElementsPerThread, 256>(p.cols, LossLaunch<TS, TT>{p, stream});
  if (!a.per_row_loss) sum_row_losses_kernel<Acc><<<1, kReduceBlock, 0, stream>>>(p, static_cast<Acc*>(a.loss));
}

}  // namespace
}  // namespace fusedkd::cuda

namespace fusedkd {

bool soft_target_cuda_supports(DType student, DType teacher) {
  if (student == teacher) return true;
  const bool wide_narrow = (student == DType::Float32) != (teacher == DType::Float32);
  const bool no_double = student != DType::Float64 && teacher != DType::Float64;
  const bool no_half_bf16 = !(student == DType::Float16 && teacher == DType::BFloat16) &&
                            !(student == DType::BFloat16 && teacher == DType::Float16);
  return wide_narrow && no_double && no_half_bf16;
}

void soft_target_loss_cuda(const SoftTargetArgs& args, CUstream_st* stream) {
  detail::validate(args);
  if (args.rows == 0) {
    if (!args.per_row_loss) {
      FUSEDKD_CUDA_CHECK(cudaMemsetAsync(args.loss, 0, soft_target_uses_double(args) ? 8 : 4, stream));
    }
    return;
  }
  cuda::dispatch_pair(args.student_dtype, args.teacher_dtype, [&](auto s_tag, auto t_tag) {
    cuda::launch_loss<typename decltype(s_tag)::type, typename decltype(t_tag)::type>(args, stream);
  });
  FUSEDKD_CUDA_CHECK(cudaGetLastError());
}

void scale_rows_cuda(const ScaleRowsArgs& args, CUstream_st* stream) {
  detail::validate(args);
  if (args.rows == 0 || args.cols == 0) return;
  if (args.cols > std::numeric_limits<int>::max())
    throw std::invalid_argument("fusedkd: scale_rows_cuda: cols must fit in 32 bits");
  constexpr int kBlock = 256;
  cuda::dispatch_dtype(args.grad_dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Acc = cuda::acc_t<T>;
    if (args.grad_output_is_double != std::is_same_v<Acc, double>)
      throw std::invalid_argument("fusedkd: grad_output must have the loss dtype of the gradient");
    cuda::scale_rows_kernel<T, kBlock><<<cuda::grid_size(args.rows, 1, kBlock), kBlock, 0, stream>>>(
        static_cast<T*>(args.grad), args.rows, static_cast<int>(args.cols),
        static_cast<const Acc*>(args.grad_output), args.per_row);
  });
  FUSEDKD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fusedkd

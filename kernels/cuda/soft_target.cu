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
#include <atomic>
#include <map>
#include <mutex>
#include <tuple>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <cooperative_groups.h>

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

// The row's contribution to the total (or its per-row loss); NaN for a label outside [0, V),
// whatever hard_weight is (the CPU launcher rejects such a label; here it poisons the loss).
template <typename Acc, typename TS>
__device__ __forceinline__ Acc row_value(const Params<Acc>& p, const KDRow<Acc>& kd, const KDSums<Acc>& sums,
                                         const RowLabel& y, const TS* s_row) {
  if (y.bad) return quiet_nan<Acc>();
  const Acc soft = p.soft_scale * sums.loss;
  if (!p.hard) return soft;
  return soft + p.hard_scale * kd.cross_entropy(static_cast<Acc>(to_acc(s_row[y.label])));
}

// The student gradient of element j from its soft gradient: weighted, plus the cross-entropy's;
// NaN for a row with a label outside [0, V), whatever hard_weight is.
template <typename Acc>
__device__ __forceinline__ Acc student_gradient(Acc soft_gradient, Acc s, std::int64_t j, const KDRow<Acc>& kd,
                                                const RowLabel& y, Acc ws, Acc wh) {
  if (y.bad) return quiet_nan<Acc>();
  if (wh == Acc(0)) return ws * soft_gradient;
  return ws * soft_gradient + wh * kd.hard_gradient(s, j == y.label);
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

// The statistics of one chunk of N student and teacher values.
template <typename Acc, int N>
__device__ __forceinline__ KDStats<Acc> chunk_stats(const Params<Acc>& p, const Acc (&s)[N], const Acc (&t)[N]) {
  return kd_stats_of(s, t, p.scale_log2, p.hard);
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

// One row of a block-per-row kernel: where its arrays lie and how they are chunked (by the
// student's alignment; the other arrays load and store as vectors only when aligned alike).
template <typename TS, typename TT>
struct BlockRow {
  using Acc = typename PairTraits<TS, TT>::Acc;
  static constexpr int N = PairTraits<TS, TT>::kWidth;
  const TS* s;
  const TT* t;
  TS* gs;
  TT* gt;
  int head;
  bool t_vector_ok, gs_vector_ok, gt_vector_ok;
  std::int64_t chunks;

  __device__ __forceinline__ BlockRow(const Params<Acc>& p, std::int64_t row)
      : s(static_cast<const TS*>(p.student) + row * p.student_row_stride),
        t(static_cast<const TT*>(p.teacher) + row * p.teacher_row_stride),
        gs(p.grad_student ? static_cast<TS*>(p.grad_student) + row * p.cols : nullptr),
        gt(p.grad_teacher ? static_cast<TT*>(p.grad_teacher) + row * p.cols : nullptr) {
    head = chunk_head<TS, N>(s);
    t_vector_ok = chunk_head<TT, N>(t) == head;
    gs_vector_ok = gs && chunk_head<TS, N>(gs) == head;
    gt_vector_ok = gt && chunk_head<TT, N>(gt) == head;
    chunks = chunk_count(p.cols, head, N);
  }

  __device__ __forceinline__ void load(const Params<Acc>& p, std::int64_t c, bool streaming, Acc (&xs)[N],
                                       Acc (&xt)[N]) const {
    load_chunk<TS, N>(s, p.cols, head, c, true, streaming, xs, neg_infinity<Acc>());
    load_chunk<TT, N>(t, p.cols, head, c, t_vector_ok, streaming, xt, neg_infinity<Acc>());
  }

  // Zero gradients for chunk c (an ignored row).
  __device__ __forceinline__ void store_zeros(const Params<Acc>& p, std::int64_t c) const {
    Acc zeros[N];
#pragma unroll
    for (int k = 0; k < N; ++k) zeros[k] = Acc(0);
    if (gs) store_chunk<TS, N>(gs, p.cols, head, c, gs_vector_ok, zeros);
    if (gt) store_chunk<TT, N>(gt, p.cols, head, c, gt_vector_ok, zeros);
  }

  // The gradients of chunk c from its values (overwritten), for divergence D.
  template <Divergence D>
  __device__ __forceinline__ void store_gradients(const Params<Acc>& p, const KDRow<Acc>& kd, const KDSums<Acc>& sums,
                                                  const RowLabel& y, Acc ws, Acc wh, std::int64_t c, Acc (&xs)[N],
                                                  Acc (&xt)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      Acc grad_s, grad_t;
      kd_soft_gradients<D>(kd, sums, xs[k], xt[k], grad_s, grad_t);
      xs[k] = student_gradient(grad_s, xs[k], c * N - head + k, kd, y, ws, wh);
      xt[k] = ws * grad_t;
    }
    if (gs) store_chunk<TS, N>(gs, p.cols, head, c, gs_vector_ok, xs);
    if (gt) store_chunk<TT, N>(gt, p.cols, head, c, gt_vector_ok, xt);
  }
};

// Rows too long for the register tiles and for the on-chip kernel: a block per row, sweeping the
// row in device memory. The KL divergences gather their loss with the statistics
// (KLStats, docs/math.md): two sweeps, statistics and gradients (5X bytes with a student
// gradient). JSD and MSE need the final statistics for their sums: three sweeps (7X).
template <typename TS, typename TT, int BLOCK>
__global__ void __launch_bounds__(BLOCK, 2) soft_target_streaming_kernel(Params<typename PairTraits<TS, TT>::Acc> p) {
  using Acc = typename PairTraits<TS, TT>::Acc;
  constexpr int N = PairTraits<TS, TT>::kWidth;
  using StatsReduce = RowAllReduce<KDStats<Acc>, BLOCK, BLOCK>;
  using KLReduce = RowAllReduce<KLStats<Acc>, BLOCK, BLOCK>;
  using SumsReduce = RowAllReduce<KDSums<Acc>, BLOCK, BLOCK>;
  __shared__ typename StatsReduce::TempStorage stats_storage;
  __shared__ typename KLReduce::TempStorage kl_storage;
  __shared__ typename SumsReduce::TempStorage sums_storage;
  const KDStatsMerge<Acc> merge{p.scale_log2};
  const bool kl = is_kl(p.divergence);
  const KLStatsMerge<Acc> kl_merge{p.scale_log2, p.inv_t, p.divergence == Divergence::ReverseKL};
  const Acc weight = row_weight(p);

  for (std::int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const BlockRow<TS, TT> r(p, row);
    const RowLabel y = row_label(p, row);
    if (!y.valid) {
      for (std::int64_t c = threadIdx.x; c < r.chunks; c += BLOCK) r.store_zeros(p, c);
      if (threadIdx.x == 0) p.row_losses[row] = Acc(0);
      continue;
    }

    KDStats<Acc> stats;
    Acc kl_loss = Acc(0);
    if (kl) {
      KLStats<Acc> local{kd_stats_empty<Acc>(), Acc(0)};
      for (std::int64_t c = threadIdx.x; c < r.chunks; c += BLOCK) {
        Acc s[N], t[N];
        r.load(p, c, /*streaming=*/false, s, t);
        local = kl_merge(local, kl_stats_of(s, t, p.scale_log2, p.inv_t, p.hard, kl_merge.reverse));
      }
      const KLStats<Acc> all = KLReduce::run(local, kl_merge, kl_storage, 0);
      stats = all.stats;
      kl_loss = all.cross;
    } else {
      KDStats<Acc> local = kd_stats_empty<Acc>();
      for (std::int64_t c = threadIdx.x; c < r.chunks; c += BLOCK) {
        Acc s[N], t[N];
        r.load(p, c, /*streaming=*/false, s, t);
        local = merge(local, chunk_stats(p, s, t));
      }
      stats = StatsReduce::run(local, merge, stats_storage, 0);
    }
    const KDRow<Acc> kd = KDRow<Acc>::make(stats, p.inv_t, p.divergence, p.beta);

    KDSums<Acc> sums{Acc(0), Acc(0), Acc(0)};
    if (kl) {
      sums.loss = kl_from_cross(stats, kd, kl_loss);
    } else {
      KDSums<Acc> partial{Acc(0), Acc(0), Acc(0)};
      with_divergence(kd.divergence, [&](auto d) {
        for (std::int64_t c = threadIdx.x; c < r.chunks; c += BLOCK) {
          Acc s[N], t[N];
          r.load(p, c, /*streaming=*/false, s, t);
#pragma unroll
          for (int k = 0; k < N; ++k) kd_accumulate<decltype(d)::value>(kd, s[k], t[k], partial);
        }
      });
      sums = SumsReduce::run(partial, KDSumsAdd<Acc>{}, sums_storage, 0);
    }

    if (threadIdx.x == 0) p.row_losses[row] = row_value(p, kd, sums, y, r.s);
    if (!r.gs && !r.gt) continue;
    const Acc ws = weight * p.soft_scale;
    const Acc wh = p.hard ? weight * p.hard_scale : Acc(0);
    with_divergence(kd.divergence, [&](auto d) {
      for (std::int64_t c = threadIdx.x; c < r.chunks; c += BLOCK) {
        Acc s[N], t[N];
        r.load(p, c, /*streaming=*/true, s, t);
        r.store_gradients<decltype(d)::value>(p, kd, sums, y, ws, wh, c, s, t);
      }
    });
  }
}

// Which part of a row a block of the on-chip kernel holds. Without clusters (or on sm_80) every
// block is a cluster of one; on sm_90 a row may be split over a cluster of up to 16 blocks, each
// holding a slice of `slice_chunks` chunks in its shared memory.
struct RowSplit {
  int rank;     // this block's slice
  int blocks;   // blocks per row (the cluster size)
  unsigned int cluster;
  unsigned int clusters;
  __device__ __forceinline__ RowSplit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
    rank = static_cast<int>(cl.block_rank());
    blocks = static_cast<int>(cl.num_blocks());
    cluster = static_cast<unsigned int>(cooperative_groups::grid_group::cluster_rank());
    clusters = static_cast<unsigned int>(cooperative_groups::grid_group::num_clusters());
#else
    rank = 0;
    blocks = 1;
    cluster = blockIdx.x;
    clusters = gridDim.x;
#endif
  }
};

// The row-wide value from each block's `block_value` (every thread of every block of the
// cluster must call it, with the block's value in every thread): the cluster's blocks publish
// their values in shared memory, and every block combines all of them in rank order, so each
// gets the same, deterministic result. Without a cluster this is `block_value` itself.
template <typename V, typename Op>
__device__ __forceinline__ V combine_over_cluster(const V& block_value, Op op, const RowSplit& split,
                                                  V& published, V& combined) {
  if (split.blocks == 1) return block_value;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
  if (threadIdx.x == 0) published = block_value;
  cl.sync();  // every block's value is in place and visible across the cluster
  if (threadIdx.x < 32) {
    // Lane r reads block r's value; a fixed tree over the lanes combines them (the same tree,
    // the same result, in every block).
    const int lane = static_cast<int>(threadIdx.x);
    V v = lane < split.blocks ? *cl.map_shared_rank(&published, lane) : block_value;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      const V other = cub::ShuffleDown<32>(v, offset, 31, 0xffffffffu);
      if (lane + offset < split.blocks) v = op(v, other);
    }
    if (lane == 0) combined = v;
  }
  __syncthreads();
  const V result = combined;
  __syncthreads();  // `combined` is free again
  return result;
#else
  (void)op;
  (void)published;
  (void)combined;
  __trap();  // clusters are launched only on sm_90 and later
  return block_value;
#endif
}

// Bytes of dynamic shared memory the on-chip kernel holds a slice of `slice_chunks` chunks in:
// the student's chunks as stored, then the teacher's (16-byte aligned).
template <typename TS, typename TT>
struct OnChipLayout {
  static constexpr int N = PairTraits<TS, TT>::kWidth;
  __host__ __device__ static constexpr std::size_t teacher_offset(std::int64_t slice_chunks) {
    return (static_cast<std::size_t>(slice_chunks) * sizeof(Pack<TS, N>) + 15) / 16 * 16;
  }
  __host__ __device__ static constexpr std::size_t bytes(std::int64_t slice_chunks) {
    return teacher_offset(slice_chunks) + static_cast<std::size_t>(slice_chunks) * sizeof(Pack<TT, N>);
  }
};

// Chunks a thread of the on-chip kernel loads before it uses the first (loads in flight): 4, or 2
// for double (4 spill on sm_90).
template <typename Acc>
constexpr int kOnChipLoadsInFlight = std::is_same_v<Acc, double> ? 2 : 4;

// Rows that fit on chip (in one block's shared memory, or a cluster's): each block reads its
// slice of the student and teacher rows from device memory once, as stored, into shared memory
// (computing the statistics on the way), and the sums and gradient sweeps read the slice from
// there: 3X bytes with a student gradient. Each thread reads back only the chunks it loaded, so
// the slices need no synchronisation; the row statistics and sums are combined over the
// cluster through distributed shared memory (combine_over_cluster).
template <typename TS, typename TT, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    soft_target_onchip_kernel(Params<typename PairTraits<TS, TT>::Acc> p, int slice_chunks) {
  using Acc = typename PairTraits<TS, TT>::Acc;
  constexpr int N = PairTraits<TS, TT>::kWidth;
  using Layout = OnChipLayout<TS, TT>;
  using StatsReduce = RowAllReduce<KDStats<Acc>, BLOCK, BLOCK>;
  using SumsReduce = RowAllReduce<KDSums<Acc>, BLOCK, BLOCK>;
  extern __shared__ __align__(16) unsigned char onchip_slice[];
  Pack<TS, N>* s_slice = reinterpret_cast<Pack<TS, N>*>(onchip_slice);
  Pack<TT, N>* t_slice = reinterpret_cast<Pack<TT, N>*>(onchip_slice + Layout::teacher_offset(slice_chunks));
  __shared__ typename StatsReduce::TempStorage stats_storage;
  __shared__ typename SumsReduce::TempStorage sums_storage;
  __shared__ KDStats<Acc> stats_published, stats_combined;
  __shared__ KDSums<Acc> sums_published, sums_combined;
  const KDStatsMerge<Acc> merge{p.scale_log2};
  const Acc weight = row_weight(p);
  const RowSplit split;
  const TS s_fill = from_acc<TS>(neg_infinity<acc_t<TS>>());
  const TT t_fill = from_acc<TT>(neg_infinity<acc_t<TT>>());

  for (std::int64_t row = split.cluster; row < p.rows; row += split.clusters) {
    const BlockRow<TS, TT> r(p, row);
    const std::int64_t begin = static_cast<std::int64_t>(split.rank) * slice_chunks;
    const std::int64_t end = begin + slice_chunks < r.chunks ? begin + slice_chunks : r.chunks;
    const RowLabel y = row_label(p, row);  // the same in every block of the cluster
    if (!y.valid) {
      for (std::int64_t c = begin + threadIdx.x; c < end; c += BLOCK) r.store_zeros(p, c);
      if (split.rank == 0 && threadIdx.x == 0) p.row_losses[row] = Acc(0);
      continue;
    }

    // Read the slice once, keep it as stored, and gather the statistics on the way.
    KDStats<Acc> local = kd_stats_empty<Acc>();
    constexpr int kInFlight = kOnChipLoadsInFlight<Acc>;
    for (std::int64_t c0 = begin + threadIdx.x; c0 < end; c0 += kInFlight * BLOCK) {
      Pack<TS, N> s_raw[kInFlight];
      Pack<TT, N> t_raw[kInFlight];
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        const std::int64_t c = c0 + u * BLOCK;
        if (c < end) {
          s_raw[u] = load_chunk_raw<TS, N>(r.s, p.cols, r.head, c, true, /*streaming=*/true, s_fill);
          t_raw[u] = load_chunk_raw<TT, N>(r.t, p.cols, r.head, c, r.t_vector_ok, /*streaming=*/true, t_fill);
        }
      }
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        const std::int64_t c = c0 + u * BLOCK;
        if (c < end) {
          s_slice[c - begin] = s_raw[u];
          t_slice[c - begin] = t_raw[u];
          Acc s[N], t[N];
          unpack_chunk<TS, N>(s_raw[u], s);
          unpack_chunk<TT, N>(t_raw[u], t);
          local = merge(local, chunk_stats(p, s, t));
        }
      }
    }
    const KDStats<Acc> stats = combine_over_cluster(StatsReduce::run(local, merge, stats_storage, 0), merge, split,
                                                    stats_published, stats_combined);
    const KDRow<Acc> kd = KDRow<Acc>::make(stats, p.inv_t, p.divergence, p.beta);

    KDSums<Acc> partial{Acc(0), Acc(0), Acc(0)};
    with_divergence(kd.divergence, [&](auto d) {
      for (std::int64_t c = begin + threadIdx.x; c < end; c += BLOCK) {
        Acc s[N], t[N];
        unpack_chunk<TS, N>(s_slice[c - begin], s);
        unpack_chunk<TT, N>(t_slice[c - begin], t);
#pragma unroll
        for (int k = 0; k < N; ++k) kd_accumulate<decltype(d)::value>(kd, s[k], t[k], partial);
      }
    });
    const KDSums<Acc> sums = combine_over_cluster(SumsReduce::run(partial, KDSumsAdd<Acc>{}, sums_storage, 0),
                                                  KDSumsAdd<Acc>{}, split, sums_published, sums_combined);

    if (split.rank == 0 && threadIdx.x == 0) p.row_losses[row] = row_value(p, kd, sums, y, r.s);
    if (!r.gs && !r.gt) continue;
    const Acc ws = weight * p.soft_scale;
    const Acc wh = p.hard ? weight * p.hard_scale : Acc(0);
    with_divergence(kd.divergence, [&](auto d) {
      for (std::int64_t c = begin + threadIdx.x; c < end; c += BLOCK) {
        Acc s[N], t[N];
        unpack_chunk<TS, N>(s_slice[c - begin], s);
        unpack_chunk<TT, N>(t_slice[c - begin], t);
        r.store_gradients<decltype(d)::value>(p, kd, sums, y, ws, wh, c, s, t);
      }
    });
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // No block may leave while another can still read its shared memory.
  if (split.blocks > 1) cooperative_groups::this_cluster().sync();
#endif
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
    const std::int64_t chunks = chunk_count(cols, head, N);
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

// Two register tiles and this math: at 512 threads (128 registers each) ptxas spills, so the
// tiles stop at 256 threads and rows up to 4093 float32 elements are held in registers
// (docs/architecture.md).
constexpr int kMaxTileBlock = 256;

std::atomic<bool> g_streaming_only{false};
std::atomic<int> g_min_blocks_per_row{1};
std::atomic<bool> g_fail_cluster_queries{false};

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
      cudaLaunchAttribute cluster;
      cluster.id = cudaLaunchAttributeClusterDimension;
      cluster.val.clusterDim.x = static_cast<unsigned int>(blocks);
      cluster.val.clusterDim.y = 1;
      cluster.val.clusterDim.z = 1;
      cudaLaunchConfig_t config = {};
      config.gridDim = dim3(static_cast<unsigned int>(blocks));
      config.blockDim = dim3(kBlock);
      config.dynamicSmemBytes = plan.shared_bytes;
      config.attrs = &cluster;
      config.numAttrs = 1;
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
  void streaming() const {
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
    cudaLaunchAttribute cluster;
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = static_cast<unsigned int>(plan.blocks_per_row);
    cluster.val.clusterDim.y = 1;
    cluster.val.clusterDim.z = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(grid);
    config.blockDim = dim3(kBlock);
    config.dynamicSmemBytes = plan.shared_bytes;
    config.stream = stream;
    config.attrs = &cluster;
    config.numAttrs = 1;
    FUSEDKD_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p, plan.slice_chunks));
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
  void streaming() const {
    const OnChipPlan onchip = plan_onchip<TS, TT>(cols);
    if (onchip.blocks_per_row == 0) {
      *plan = {detail::CudaRowPlan::Kind::Streaming, 1};
    } else {
      *plan = {detail::CudaRowPlan::Kind::OnChip, onchip.blocks_per_row};
    }
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
  cuda::dispatch_pair(student, teacher, [&](auto s_tag, auto t_tag) {
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

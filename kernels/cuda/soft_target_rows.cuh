// The pieces of a soft-target row that every CUDA row kernel (soft_target_kernels.cuh) shares:
// the kernel parameters, a row's label and weight, its value and its student gradient, a row read
// in chunks from device memory (BlockRow), and a row split over a thread-block cluster (RowSplit,
// combine_over_cluster, OnChipLayout). Math: fusedkd/soft_target_math.h.
#pragma once

#include <cooperative_groups.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "fusedkd/soft_target_math.h"
#include "row_tile.cuh"

namespace fusedkd::cuda {
namespace {  // one translation unit (soft_target.cu) includes this

// Threads of the long-row kernel: 512, or 256 for double (more registers per thread).
template <typename Acc>
constexpr int kStreamingBlock = std::is_same_v<Acc, double> ? 256 : 512;
constexpr int kReduceBlock = 1024;

// Everything a soft-target row kernel needs, in the accumulation type: the temperature (inv_t,
// scale_log2) and the call's arguments.
template <typename Acc>
struct Params : Temperature<Acc> {
  const void* student;
  const void* teacher;
  std::int64_t student_row_stride;
  std::int64_t teacher_row_stride;
  std::int64_t rows;
  int cols;
  Divergence divergence;
  Mixture<Acc> mixture;
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

// The statistics of one chunk of N student and teacher values.
template <typename Acc, int N>
__device__ __forceinline__ KDStats<Acc> chunk_stats(const Params<Acc>& p, const Acc (&s)[N], const Acc (&t)[N]) {
  return kd_stats_of(s, t, p.scale_log2, p.hard);
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

}  // namespace
}  // namespace fusedkd::cuda

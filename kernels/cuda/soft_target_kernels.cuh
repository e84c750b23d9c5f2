// The CUDA soft-target row kernels, one per regime (docs/architecture.md): a register tile per row
// (rows up to 4093 float32 elements), a row on chip (in shared memory, split over a cluster on
// sm_90), a row streamed from device memory; and the one-block kernels that count the valid rows
// and add the row losses. soft_target.cu plans and launches them.
#pragma once

#include "soft_target_rows.cuh"

namespace fusedkd::cuda {
namespace {  // one translation unit (soft_target.cu) includes this

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
    const KDRow<Acc> kd = KDRow<Acc>::make(stats, p.inv_t, p.divergence, p.mixture);

    KDSums<Acc> partial{Acc(0), Acc(0), Acc(0)};
    with_divergence(kd.divergence, [&](auto d) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i)
#pragma unroll
        for (int k = 0; k < N; ++k) kd_accumulate<decltype(d)::value>(kd, xs.v[i][k], xt.v[i][k], partial);
    });
    const KDSums<Acc> sums = SumsReduce::run(partial, Plus{}, sums_storage, g.group);

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
    const KDRow<Acc> kd = KDRow<Acc>::make(stats, p.inv_t, p.divergence, p.mixture);

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
      sums = SumsReduce::run(partial, Plus{}, sums_storage, 0);
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
    const KDRow<Acc> kd = KDRow<Acc>::make(stats, p.inv_t, p.divergence, p.mixture);

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
    const KDSums<Acc> sums = combine_over_cluster(SumsReduce::run(partial, Plus{}, sums_storage, 0),
                                                  Plus{}, split, sums_published, sums_combined);

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

}  // namespace
}  // namespace fusedkd::cuda

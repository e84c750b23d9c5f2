// CPU soft-target losses (kl_div, jsd, soft_mse, kd_loss): one pass per row while the row is in
// cache. Compiled once per instruction set, like softmax_cpu.cpp.
//
// Per row: rows stored in the accumulation type are read where they lie, and so are a student and
// a teacher both bfloat16 or both float16 (widened in the sweeps as they are read; float16 only
// where the instruction set converts it, kReadInPlace); other narrower rows are converted once
// into scratch rows. The maxima, the statistics, the row sums and the gradients are `omp simd`
// sweeps over them (the divergence is a template parameter, so each sweep is one straight loop);
// gradients go straight into the output, or through a scratch row converted once on store
// (process_row). Rows of up to 31 elements go 16 at a time, transposed, so that the same sweeps
// vectorise across rows (process_short_rows). Row losses land in a
// per-row buffer that is summed afterwards in row order, so the total does not depend on how rows
// were split across threads.
#include <algorithm>
#include <cmath>

#include "cpu_kernels.h"
#include "row_buffers.h"
#include "vector_math.h"
#include "fusedkd/soft_target_math.h"

namespace fusedkd::cpu::FUSEDKD_CPU_ISA {
namespace {

// Where the statistics sweep takes the cross-entropy's numerator exp(s - m_s) from: the soft
// numerator exp((s - m_s) / T) is that number at T = 1 and its square root at T = 2 (the
// distillation temperatures most used), so an exponential of its own is needed only at any other
// T. At 4096 x 32,000, T = 2, the statistics sweep (no gradient) measured 36 -> 34 ms float32 and
// 32-33 -> 30 ms bfloat16 from memory, 27 -> 24.5 ms float32 with the rows in cache (2026-12-01,
// alternating runs).
enum class HardNumerator { Exp, Soft, SoftSquared };

// The temperature (inv_t, scale_log2) and the rest of what every row of a call shares.
template <typename Acc>
struct RowPlan : Temperature<Acc> {
  Mixture<Acc> mixture;
  Acc weight, soft_scale, hard_scale;
  bool hard;
  HardNumerator hard_numerator;
  bool stream_student, stream_teacher;  // the gradients written with streaming stores (row_buffers.h)
};

// Element j's share of the KL loss sum C (relative to the row maxima), weighed by the teacher
// (forward KL) or the student (reverse KL).
template <Divergence D, typename Acc>
inline __attribute__((always_inline)) Acc kl_cross(Acc s, Acc t, Acc max_s, Acc max_t, const RowPlan<Acc>& plan) {
  if constexpr (D == Divergence::ReverseKL) return kl_cross_term(s, max_s, t, max_t, plan.scale_log2, plan.inv_t);
  return kl_cross_term(t, max_t, s, max_s, plan.scale_log2, plan.inv_t);
}

#if defined(__AVX512F__)
// statistics_block's loop for a float row pair, 16 elements at a time in AVX-512 (vector_math.h:
// the same exponentials, bit for bit, and the same zero rules), the last partial vector under a
// mask. The omp simd loop of statistics_block builds about 51 instructions per 16 elements for
// kd_loss (forward KL, labels, T = 2) on a row free of -inf, this one about 36 (the KL share one
// multiply-add since 2026-12-02), and two prefetches of the next row (RowPrefetch). (A 16-bit pair
// widened in the registers as this loop reads it, instead of through statistics_block's float
// blocks in L1, measured the same: bfloat16 at 4096 x 32,000, 2026-12-01.) Without kFinite
// the terms of -inf logits are selected to 0 as softmax_sum_term and kl_cross_term do; the KL
// share's weight is then the sum's numerator (0 where its logit is -inf, which the share's own
// select gives), so rows with -inf and the same rows masked with the lowest finite value instead
// sum the same terms in the same order and give the same bits (a test).
template <Divergence D, bool kHard, bool kKeep, bool kFinite, HardNumerator kH>
inline __attribute__((always_inline)) void statistics_x16(const RowPlan<float>& plan, float max_s,
                                                                 float max_t, std::int64_t j0, std::int64_t j1,
                                                                 const float* __restrict s, const float* __restrict t,
                                                                 float* __restrict ks, float* __restrict kt,
                                                                 float* __restrict kh, float& bs, float& bt, float& bh,
                                                                 float& bc, const RowPrefetch& next) {
  const __m512 ms = _mm512_set1_ps(max_s), mt = _mm512_set1_ps(max_t);
  const __m512 scale = _mm512_set1_ps(plan.scale_log2), inv_t = _mm512_set1_ps(plan.inv_t);
  const __m512 log2e = _mm512_set1_ps(static_cast<float>(kLog2e));
  __m512 vs = _mm512_setzero_ps(), vt = vs, vh = vs, vc = vs;
  const __m512 neg_inf = _mm512_set1_ps(neg_infinity<float>());
  const auto step = [&](std::int64_t j, __mmask16 m) __attribute__((always_inline)) {
    next.step(j - j0);
    const __m512 sj = _mm512_maskz_loadu_ps(m, s + j), tj = _mm512_maskz_loadu_ps(m, t + j);
    // Without kFinite, the lanes whose logit is finite, and each side's difference from its
    // maximum as kl_cross_term takes it (-inf stays -inf).
    const __mmask16 fs = kFinite ? __mmask16(0xFFFF) : _mm512_cmp_ps_mask(sj, neg_inf, _CMP_NEQ_UQ);
    const __mmask16 ft = kFinite ? __mmask16(0xFFFF) : _mm512_cmp_ps_mask(tj, neg_inf, _CMP_NEQ_UQ);
    const __m512 ds = _mm512_mask_mov_ps(neg_inf, fs, sj - ms), dt = _mm512_mask_mov_ps(neg_inf, ft, tj - mt);
    const __m512 es = _mm512_maskz_mov_ps(fs, exp2_nonpositive_x16(ds * scale));
    const __m512 et = _mm512_maskz_mov_ps(ft, exp2_nonpositive_x16(dt * scale));
    vs = _mm512_mask_add_ps(vs, m, vs, es);
    vt = _mm512_mask_add_ps(vt, m, vt, et);
    // The KL share, the weight times the log-ratio over T (scaled per element, as kl_cross_term
    // does, so that the same elements overflow), added by one multiply-add.
    if constexpr (D == Divergence::ForwardKL) vc = weighted_fmadd_x16(vc, et, (dt - ds) * inv_t, m);
    if constexpr (D == Divergence::ReverseKL) vc = weighted_fmadd_x16(vc, es, (ds - dt) * inv_t, m);
    __m512 eh = es;
    if constexpr (kHard) {
      if constexpr (kH == HardNumerator::Exp) eh = _mm512_maskz_mov_ps(fs, exp2_nonpositive_x16(ds * log2e));
      if constexpr (kH == HardNumerator::SoftSquared) eh = square_nonnegative_x16(es);
      vh = _mm512_mask_add_ps(vh, m, vh, eh);
    }
    if constexpr (kKeep) {
      _mm512_mask_storeu_ps(ks + j, m, es);
      _mm512_mask_storeu_ps(kt + j, m, et);
      if constexpr (kHard) _mm512_mask_storeu_ps(kh + j, m, eh);
    }
  };
  for_each_x16(j0, j1, step);
  bs += _mm512_reduce_add_ps(vs);
  bt += _mm512_reduce_add_ps(vt);
  if constexpr (kHard) bh += _mm512_reduce_add_ps(vh);
  if constexpr (is_kl(D)) bc += _mm512_reduce_add_ps(vc);
}
#else
template <Divergence D, bool kHard, bool kKeep, bool kFinite, HardNumerator kH, typename... Args>
void statistics_x16(Args&&...) {}  // never instantiated: kVectorMath is false
#endif

// The statistics sweep over one row's block [j0, j1) of the logits s and t: the three sums (the
// hard one when kHard) and the KL loss sum C; with kKeep it also writes each element's softmax
// numerators (ks: exp((s - m_s)/T), kt: exp((t - m_t)/T), kh: exp(s - m_s)), for later sweeps
// without exponentials (see keeps_numerators); kH says where kh comes from (HardNumerator).
// kFinite: neither row holds a -inf, so the terms need no exact-zero selects and C reuses the
// numerator exp((x - m_x)/T) of its sum. Float rows go through the AVX-512 loop where the copy has
// one (statistics_x16). A 16-bit pair is widened block by block into two float rows on the stack
// (8 KiB, in L1) and the block summed by the float loop: read in the loop itself, the
// 16-bit type made the vectoriser take 32 elements per iteration, which spilled its registers
// (bfloat16 at 4096 x 32,000 with the rows in cache: 31.1-31.2 -> 27.6-27.7 ms; from memory
// 32.3-32.7 -> 30.2-30.5 ms; measured 2026-12-01).
template <Divergence D, bool kHard, bool kKeep, bool kFinite, HardNumerator kH, typename Acc, typename In>
inline __attribute__((always_inline)) void statistics_block(const RowPlan<Acc>& plan, Acc max_s, Acc max_t,
                                                            std::int64_t j0, std::int64_t j1,
                                                            const In* __restrict s, const In* __restrict t,
                                                            Acc* __restrict ks, Acc* __restrict kt, Acc* __restrict kh,
                                                            Acc& bs, Acc& bt, Acc& bh, Acc& bc,
                                                            const RowPrefetch& next) {
  if constexpr (!std::is_same_v<In, Acc>) {
    alignas(64) Acc ws[kSumBlock], wt[kSumBlock];
    const std::int64_t n = j1 - j0;
#pragma omp simd
    for (std::int64_t j = 0; j < n; ++j) {
      ws[j] = at<Acc>(s, j0 + j);
      wt[j] = at<Acc>(t, j0 + j);
    }
    Acc* const none = nullptr;
    statistics_block<D, kHard, kKeep, kFinite, kH, Acc, Acc>(plan, max_s, max_t, 0, n, ws, wt, kKeep ? ks + j0 : none,
                                                        kKeep ? kt + j0 : none, kKeep && kHard ? kh + j0 : none, bs,
                                                        bt, bh, bc, next);
  } else if constexpr (kVectorMath && std::is_same_v<Acc, float>) {
    statistics_x16<D, kHard, kKeep, kFinite, kH>(plan, max_s, max_t, j0, j1, s, t, ks, kt, kh, bs, bt, bh, bc, next);
  } else {
#pragma omp simd reduction(+ : bs, bt, bh, bc)
    for (std::int64_t j = j0; j < j1; ++j) {
      Acc es, et, eh = Acc(0);
      if constexpr (kFinite) {
        es = softmax_numerator(at<Acc>(s, j), max_s, plan.scale_log2);
        et = softmax_numerator(at<Acc>(t, j), max_t, plan.scale_log2);
        if constexpr (kHard && kH == HardNumerator::Exp) eh = softmax_numerator(at<Acc>(s, j), max_s, Acc(kLog2e));
        if constexpr (D == Divergence::ForwardKL)
          bc += kl_cross_term_finite(et, at<Acc>(t, j), max_t, at<Acc>(s, j), max_s, plan.inv_t);
        if constexpr (D == Divergence::ReverseKL)
          bc += kl_cross_term_finite(es, at<Acc>(s, j), max_s, at<Acc>(t, j), max_t, plan.inv_t);
      } else {
        es = softmax_sum_term(at<Acc>(s, j), max_s, plan.scale_log2);
        et = softmax_sum_term(at<Acc>(t, j), max_t, plan.scale_log2);
        if constexpr (kHard && kH == HardNumerator::Exp) eh = softmax_sum_term(at<Acc>(s, j), max_s, Acc(kLog2e));
        if constexpr (is_kl(D)) bc += kl_cross<D>(at<Acc>(s, j), at<Acc>(t, j), max_s, max_t, plan);
      }
      if constexpr (kHard && kH == HardNumerator::Soft) eh = es;
      if constexpr (kHard && kH == HardNumerator::SoftSquared) eh = square_nonnegative(es);
      bs += es;
      bt += et;
      if constexpr (kHard) bh += eh;
      if constexpr (kKeep) {
        ks[j] = es;
        kt[j] = et;
        if constexpr (kHard) kh[j] = eh;
      }
    }
  }
}

// A row's sums (the divergence and the gradients' auxiliary sums) of the element terms term(j, e),
// in blocks of kSumBlock with the blocks' totals in double (row_buffers.h), rounded once.
template <typename Acc, typename Term>
inline __attribute__((always_inline)) KDSums<Acc> blocked_row_sums(std::int64_t cols, const Term& term) {
  double loss = 0, aux_s = 0, aux_t = 0;
  for (std::int64_t j0 = 0; j0 < cols; j0 += kSumBlock) {
    const std::int64_t j1 = j0 + kSumBlock < cols ? j0 + kSumBlock : cols;
    Acc bl = 0, bs = 0, bt = 0;
#pragma omp simd reduction(+ : bl, bs, bt)
    for (std::int64_t j = j0; j < j1; ++j) {
      KDSums<Acc> e{Acc(0), Acc(0), Acc(0)};
      term(j, e);
      bl += e.loss;
      bs += e.aux_s;
      bt += e.aux_t;
    }
    loss += bl;
    aux_s += bs;
    aux_t += bt;
  }
  return {static_cast<Acc>(loss), static_cast<Acc>(aux_s), static_cast<Acc>(aux_t)};
}

// Whether a row's later sweeps need the probabilities alone, so that the statistics sweep keeps
// the numerators and they only scale them: the soft MSE (its row sums and both gradients are
// functions of q and p), and the forward KL's student gradient, (q - p) / T (its teacher gradient
// needs log p - log q). Exponentials per element: forward KL 3 instead of 6 (with a CE), soft MSE
// 2 instead of 6.
template <Divergence D>
bool keeps_numerators(const SoftTargetArgs& a) {
  if constexpr (D == Divergence::MSE) return true;
  return D == Divergence::ForwardKL && a.grad_student && !a.grad_teacher;
}

// Runs a gradient sweep sweep(j0, j1, gs_out, gt_out) over a row, writing element j at
// out[j - j0]: over the whole row into gs_row / gt_row, or, where an output is streamed (tile_s,
// tile_t: a large output in the accumulation type, kStreamedOutputBytes), block by block into L1
// tiles that stream_copy writes out.
template <typename Acc, typename Sweep>
inline __attribute__((always_inline)) void gradient_blocks(std::int64_t cols, Acc* gs_row, bool tile_s, Acc* gt_row,
                                                           bool tile_t, const Sweep& sweep) {
  if (!tile_s && !tile_t) return sweep(std::int64_t{0}, cols, gs_row, gt_row);
  alignas(64) Acc ts[kStreamTileBytes / sizeof(Acc)], tt[kStreamTileBytes / sizeof(Acc)];
  stream_blocks(tile_s ? gs_row : gt_row, cols, [&](std::int64_t j0, std::int64_t j1) {
    sweep(j0, j1, tile_s ? ts : gs_row + j0, tile_t ? tt : gt_row + j0);
    const std::size_t bytes = static_cast<std::size_t>(j1 - j0) * sizeof(Acc);
    if (tile_s) stream_copy(ts, gs_row + j0, bytes);
    if (tile_t) stream_copy(tt, gt_row + j0, bytes);
  });
  stream_fence();
}

// A thread's scratch rows for long rows, each distinct from the others: xs, xt, xh for the kept
// numerators (xh: the hard ones, keeps_numerators with labels), cs, ct for logits converted from
// a narrower type. Rows stored in the accumulation type are read, and their gradients written,
// where they lie (input_row, output_row); a narrower gradient goes through a scratch row that no
// sweep reads at that point, so that no two pointers of a sweep alias.
template <typename Acc>
struct RowScratch {
  Acc *xs, *xt, *xh, *cs, *ct;
};

// One row: returns its contribution to the total (or its per-row loss) and writes gradients. In:
// the rows' storage type as the sweeps read it, Acc (in place or converted into cs, ct) or the
// 16-bit type both rows share. Read as they are, a bfloat16 pair's statistics sweep (no gradient)
// at 4096 x 32,000 took 27.5-28.0 ms against 37.3-38.1 ms through converted rows (measured,
// alternating runs): the conversion pass wrote 4 bytes per element and waited on memory (the
// statistics sweep's own widening, block by block into L1, stays in cache).
template <Divergence D, typename In, typename Acc>
Acc process_row(const SoftTargetArgs& a, const RowPlan<Acc>& plan, std::int64_t r, bool valid,
                std::int64_t label, const RowScratch<Acc>& scratch, const RowPrefetch& next) {
  const std::int64_t cols = a.cols;
  Acc* __restrict xs = scratch.xs;
  Acc* __restrict xt = scratch.xt;
  Acc* __restrict xh = scratch.xh;
  const DType gs_dtype = gradient_dtype(a.student_dtype, a.float16_gradients_in_float32);
  const DType gt_dtype = gradient_dtype(a.teacher_dtype, a.float16_gradients_in_float32);
  if (!valid) {  // an ignored row: no loss, zero gradients (whatever its logits hold)
    if (a.grad_student || a.grad_teacher) {
      for (std::int64_t j = 0; j < cols; ++j) xs[j] = Acc(0);
      if (a.grad_student) store_row(xs, cols, a.grad_student, gs_dtype, r * cols, plan.stream_student);
      if (a.grad_teacher) store_row(xs, cols, a.grad_teacher, gt_dtype, r * cols, plan.stream_teacher);
    }
    return Acc(0);
  }
  const In* s;
  const In* t;
  if constexpr (std::is_same_v<In, Acc>) {  // in place, or converted into scratch rows
    s = input_row(a.student, a.student_dtype, r * a.student_row_stride, cols, scratch.cs);
    t = input_row(a.teacher, a.teacher_dtype, r * a.teacher_row_stride, cols, scratch.ct);
  } else {  // both 16-bit: read as they are, widened in the sweeps
    s = static_cast<const In*>(a.student) + r * a.student_row_stride;
    t = static_cast<const In*>(a.teacher) + r * a.teacher_row_stride;
  }

  KDStats<Acc> st;
  bool masked = false;
  rows_max(s, t, cols, st.max_s, st.max_t, masked);
  const bool finite = !masked;
  // The three sums in one sweep (the hard one only when there is a cross-entropy), and for the KL
  // divergences their loss with them (kl_cross_term: no sweep of its own, no logarithm); blocks of
  // kSumBlock, totals in double (row_buffers.h).
  constexpr bool kKL = is_kl(D);
  const bool keep = keeps_numerators<D>(a);
  const Acc label_logit = plan.hard ? at<Acc>(s, label) : Acc(0);
  double sum_s = 0, sum_t = 0, sum_s_hard = plan.hard ? 0.0 : 1.0, cross = 0;
  for (std::int64_t j0 = 0; j0 < cols; j0 += kSumBlock) {
    const std::int64_t j1 = j0 + kSumBlock < cols ? j0 + kSumBlock : cols;
    Acc bs = 0, bt = 0, bh = 0, bc = 0;
    using HN = HardNumerator;
    const auto sweep = [&](auto hard, auto kept, auto no_neg_inf, auto numerator) {
      statistics_block<D, decltype(hard)::value, decltype(kept)::value, decltype(no_neg_inf)::value,
                       decltype(numerator)::value>(plan, st.max_s, st.max_t, j0, j1, s, t, xs, xt, xh, bs, bt, bh,
                                                   bc, next.at(j0));
    };
    const auto with_finite = [&](auto hard, auto kept, auto numerator) {
      finite ? sweep(hard, kept, std::true_type{}, numerator) : sweep(hard, kept, std::false_type{}, numerator);
    };
    const auto with_numerator = [&](auto kept) {
      constexpr std::true_type hard;
      switch (plan.hard_numerator) {
        case HN::Soft: return with_finite(hard, kept, std::integral_constant<HN, HN::Soft>{});
        case HN::SoftSquared: return with_finite(hard, kept, std::integral_constant<HN, HN::SoftSquared>{});
        default: return with_finite(hard, kept, std::integral_constant<HN, HN::Exp>{});
      }
    };
    if (plan.hard) {
      keep ? with_numerator(std::true_type{}) : with_numerator(std::false_type{});
    } else {
      constexpr std::integral_constant<HN, HN::Exp> unused;
      keep ? with_finite(std::false_type{}, std::true_type{}, unused)
           : with_finite(std::false_type{}, std::false_type{}, unused);
    }
    sum_s += bs;
    sum_t += bt;
    sum_s_hard += bh;
    cross += bc;
  }
  // The logarithms of the double sums, once each, rounded once (KDRow::make's own are of the
  // rounded sums: exp(0) = 1 stands in for them here).
  const double log_sum_s = std::log(sum_s), log_sum_t = std::log(sum_t);
  st.sum_s = st.sum_t = st.sum_s_hard = Acc(1);
  KDRow<Acc> row = KDRow<Acc>::make(st, plan.inv_t, D, plan.mixture);
  row.log_z_s = static_cast<Acc>(log_sum_s);
  row.log_z_t = static_cast<Acc>(log_sum_t);
  row.log_z_s_hard = plan.hard ? static_cast<Acc>(std::log(sum_s_hard)) : Acc(0);
  // Probabilities from kept numerators: by the reciprocals of the double sums.
  const Acc inv_z_s = static_cast<Acc>(1.0 / sum_s), inv_z_t = static_cast<Acc>(1.0 / sum_t);
  const Acc inv_z_h = static_cast<Acc>(1.0 / sum_s_hard);

  KDSums<Acc> sums{Acc(0), Acc(0), Acc(0)};
  if constexpr (kKL) {
    // From the double sums: C / Z_x and the logarithms nearly cancel on peaked rows.
    constexpr bool kReverse = D == Divergence::ReverseKL;
    sums.loss = static_cast<Acc>(kl_from_sums(cross, kReverse ? sum_s : sum_t, kReverse ? log_sum_s : log_sum_t,
                                              kReverse ? log_sum_t : log_sum_s));
  } else if constexpr (D == Divergence::MSE) {  // numerators kept (keeps_numerators)
    sums = blocked_row_sums<Acc>(cols, [&](std::int64_t j, KDSums<Acc>& e) __attribute__((always_inline)) {
      mse_accumulate(xs[j] * inv_z_s, xt[j] * inv_z_t, e);
    });
  } else {
    sums = blocked_row_sums<Acc>(cols, [&](std::int64_t j, KDSums<Acc>& e) __attribute__((always_inline)) {
      kd_accumulate<D>(row, at<Acc>(s, j), at<Acc>(t, j), e);
    });
  }
  const Acc cross_entropy = plan.hard ? row.cross_entropy(label_logit) : Acc(0);

  const Acc loss = plan.soft_scale * sums.loss + (plan.hard ? plan.hard_scale * cross_entropy : Acc(0));
  if (!a.grad_student && !a.grad_teacher) return loss;
  // The gradients' rows: the outputs themselves when stored in Acc, else scratch rows the sweep
  // below does not read (the converted logits once the numerators are kept, else xs and xt).
  Acc* spare_s = keep ? scratch.cs : xs;
  Acc* spare_t = keep ? scratch.ct : xt;
  Acc* gs_row = a.grad_student ? output_row(a.grad_student, gs_dtype, r * cols, spare_s) : spare_s;
  Acc* gt_row = a.grad_teacher ? output_row(a.grad_teacher, gt_dtype, r * cols, spare_t) : spare_t;
  const Acc ws = plan.weight * plan.soft_scale;
  const Acc wh = plan.hard ? plan.weight * plan.hard_scale : Acc(0);
  // The sweep below writes element j of a block [j0, j1) at gs_out[j - j0], gt_out[j - j0]: the
  // rows themselves, or for a large output in Acc the stream tiles (gradient_blocks).
  const bool tile_s = plan.stream_student && gs_row != spare_s, tile_t = plan.stream_teacher && gt_row != spare_t;
  if (keep) {  // xs, xt, xh hold the numerators
    const auto gradients = [&](auto with_hard) {
      gradient_blocks(cols, gs_row, tile_s, gt_row, tile_t,
                      [&](std::int64_t j0, std::int64_t j1, Acc* __restrict gs_out, Acc* __restrict gt_out) {
#pragma omp simd
                        for (std::int64_t j = j0; j < j1; ++j) {
                          const Acc q = xs[j] * inv_z_s, p = xt[j] * inv_z_t;
                          Acc gs, gt = Acc(0);
                          if constexpr (D == Divergence::MSE) {
                            mse_gradients(q, p, row.inv_t, sums, gs, gt);
                          } else {
                            gs = forward_kl_student_gradient(q, p, row.inv_t);
                          }
                          gs = ws * gs;
                          if constexpr (decltype(with_hard)::value)
                            gs += wh * cross_entropy_gradient(xh[j] * inv_z_h, j == label);
                          gs_out[j - j0] = gs;
                          if constexpr (D == Divergence::MSE) gt_out[j - j0] = ws * gt;  // the KL's is not kept
                        }
                      });
    };
    wh != Acc(0) ? gradients(std::true_type{}) : gradients(std::false_type{});
  } else {
    // The row's constants copied into locals of the sweep (and the cross-entropy's term chosen
    // outside the loop): read through the captured references, GCC 12 left the forward KL's loop
    // (the teacher's gradient wanted) scalar, because `sums.loss`, read only where p != 0
    // (`weighted`), became a masked load, which it cannot vectorise; kd_loss fwd+bwd with both
    // gradients at 4096 x 32,000 float32 took 504 ms against 111 ms for the reverse KL (measured
    // 2026-12-02). The same values as before.
    const auto gradients = [&](auto with_hard) {
      gradient_blocks(cols, gs_row, tile_s, gt_row, tile_t,
                      [&](std::int64_t j0, std::int64_t j1, Acc* __restrict gs_out, Acc* __restrict gt_out) {
                        const KDRow<Acc> rc = row;
                        const KDSums<Acc> sc = sums;
#pragma omp simd
                        for (std::int64_t j = j0; j < j1; ++j) {
                          Acc gs, gt;
                          kd_soft_gradients<D>(rc, sc, at<Acc>(s, j), at<Acc>(t, j), gs, gt);
                          Acc hard = Acc(0);
                          if constexpr (decltype(with_hard)::value) hard = wh * rc.hard_gradient(at<Acc>(s, j), j == label);
                          gs_out[j - j0] = ws * gs + hard;
                          gt_out[j - j0] = ws * gt;
                        }
                      });
    };
    wh != Acc(0) ? gradients(std::true_type{}) : gradients(std::false_type{});
  }
  if (a.grad_student) output_row_done(gs_row, cols, a.grad_student, gs_dtype, r * cols, plan.stream_student);
  if (a.grad_teacher) output_row_done(gt_row, cols, a.grad_teacher, gt_dtype, r * cols, plan.stream_teacher);
  return loss;
}

// Rows of up to kShortRowMax elements, kShortRowLanes at a time across the vector lanes
// (row_buffers.h): process_row's sweeps, each a vector loop over the group's rows.
template <Divergence D, typename Acc>
void process_short_rows(const SoftTargetArgs& a, const RowPlan<Acc>& plan, std::int64_t r0, int rows,
                        Acc* __restrict xs, Acc* __restrict xt, Acc* __restrict grad_s, Acc* __restrict grad_t,
                        Acc* __restrict row_losses) {
  constexpr int L = kShortRowLanes;
  const int lanes = opaque_lane_count();  // L, for the loops that must not be unrolled
  constexpr bool kKL = is_kl(D);
  const std::int64_t cols = a.cols;
  bool valid[L];
  std::int64_t label[L];
  for (int l = 0; l < L; ++l) {
    label[l] = l < rows && a.labels ? a.labels[r0 + l] : 0;
    valid[l] = l < rows && (!a.labels || label[l] != a.ignore_index);
  }
  load_rows_transposed(a.student, a.student_dtype, r0 * a.student_row_stride, a.student_row_stride, rows, cols, xs);
  load_rows_transposed(a.teacher, a.teacher_dtype, r0 * a.teacher_row_stride, a.teacher_row_stride, rows, cols, xt);

  // Statistics (and the KL loss sum), as process_row computes them, lane by lane.
  alignas(64) Acc max_s[L], max_t[L], sum_s[L], sum_t[L], sum_h[L], cross[L];
#pragma omp simd
  for (int l = 0; l < L; ++l) {
    max_s[l] = max_t[l] = neg_infinity<Acc>();
    sum_s[l] = sum_t[l] = cross[l] = Acc(0);
    sum_h[l] = plan.hard ? Acc(0) : Acc(1);
  }
  alignas(64) Acc lowest[L];  // the lanes' smallest logits: is there a -inf (see process_row's `finite`)
#pragma omp simd
  for (int l = 0; l < L; ++l) lowest[l] = -neg_infinity<Acc>();
  for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
    for (int l = 0; l < L; ++l) {
      const Acc sv = xs[j * L + l], tv = xt[j * L + l];
      max_s[l] = max_of(max_s[l], sv);
      max_t[l] = max_of(max_t[l], tv);
      lowest[l] = sv < lowest[l] ? sv : lowest[l];
      lowest[l] = tv < lowest[l] ? tv : lowest[l];
    }
  bool finite = true;
  for (int l = 0; l < L; ++l) finite = finite && lowest[l] != neg_infinity<Acc>();
  const auto sums = [&](auto no_neg_inf) {
    for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
      for (int l = 0; l < lanes; ++l) {
        const Acc sv = xs[j * L + l], tv = xt[j * L + l];
        if constexpr (decltype(no_neg_inf)::value) {  // the same values, without the selects
          sum_s[l] += softmax_numerator(sv, max_s[l], plan.scale_log2);
          sum_t[l] += softmax_numerator(tv, max_t[l], plan.scale_log2);
          if (plan.hard) sum_h[l] += softmax_numerator(sv, max_s[l], Acc(kLog2e));
        } else {
          sum_s[l] += softmax_sum_term(sv, max_s[l], plan.scale_log2);
          sum_t[l] += softmax_sum_term(tv, max_t[l], plan.scale_log2);
          if (plan.hard) sum_h[l] += softmax_sum_term(sv, max_s[l], Acc(kLog2e));
        }
      }
  };
  finite ? sums(std::true_type{}) : sums(std::false_type{});
  // The KL loss sum in a loop of its own: merged into the loop above, the forward KL's loop is
  // left scalar by GCC 12 ("control flow in loop": some of the -inf tests become branches). Not
  // the finite form either way (kl_cross_term_finite may fuse into a multiply-add where this does
  // not): a row's bits must not depend on whether a -inf row shares its group.
  if constexpr (kKL)
    for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
      for (int l = 0; l < lanes; ++l) cross[l] += kl_cross<D>(xs[j * L + l], xt[j * L + l], max_s[l], max_t[l], plan);

  // Per-lane row constants (the logarithms), kept as arrays so the sweeps below vectorise.
  const KDRow<Acc> base =
      KDRow<Acc>::make(KDStats<Acc>{Acc(0), Acc(1), Acc(1), Acc(0), Acc(1)}, plan.inv_t, D, plan.mixture);
  alignas(64) Acc log_z_s[L], log_z_t[L], log_z_h[L];
  for (int l = 0; l < L; ++l) {
    log_z_s[l] = std::log(sum_s[l]);
    log_z_t[l] = std::log(sum_t[l]);
    log_z_h[l] = plan.hard ? std::log(sum_h[l]) : Acc(0);  // sum_h is 1 without a cross-entropy
  }
  // Built field by field from scalars: a copy of `base` inside the lane loops is a memory copy
  // that keeps GCC from vectorising them.
  const Acc inv_t = base.inv_t, beta = base.beta, one_minus_beta = base.one_minus_beta, log_beta = base.log_beta,
            log_one_minus_beta = base.log_one_minus_beta;
  auto lane_row = [&](int l) __attribute__((always_inline)) {
    KDRow<Acc> row;
    row.inv_t = inv_t;
    row.divergence = D;
    row.beta = beta;
    row.one_minus_beta = one_minus_beta;
    row.log_beta = log_beta;
    row.log_one_minus_beta = log_one_minus_beta;
    row.max_s = max_s[l];
    row.max_t = max_t[l];
    row.log_z_s = log_z_s[l];
    row.log_z_t = log_z_t[l];
    row.log_z_s_hard = log_z_h[l];
    return row;
  };

  alignas(64) Acc loss[L], aux_s[L], aux_t[L];
  if constexpr (kKL) {
    for (int l = 0; l < L; ++l) {
      const KDStats<Acc> st{max_s[l], sum_s[l], sum_h[l], max_t[l], sum_t[l]};
      loss[l] = kl_from_cross(st, lane_row(l), cross[l]);
      aux_s[l] = aux_t[l] = Acc(0);
    }
  } else {
#pragma omp simd
    for (int l = 0; l < L; ++l) loss[l] = aux_s[l] = aux_t[l] = Acc(0);
    for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
      for (int l = 0; l < lanes; ++l) {
        KDSums<Acc> e{Acc(0), Acc(0), Acc(0)};
        kd_accumulate<D>(lane_row(l), xs[j * L + l], xt[j * L + l], e);
        loss[l] += e.loss;
        aux_s[l] += e.aux_s;
        aux_t[l] += e.aux_t;
      }
  }
  for (int l = 0; l < rows; ++l) {
    const Acc ce = plan.hard && valid[l] ? lane_row(l).cross_entropy(xs[label[l] * L + l]) : Acc(0);
    row_losses[r0 + l] = valid[l] ? plan.soft_scale * loss[l] + (plan.hard ? plan.hard_scale * ce : Acc(0)) : Acc(0);
  }

  if (!a.grad_student && !a.grad_teacher) return;
  const Acc ws = plan.weight * plan.soft_scale;
  const Acc wh = plan.hard ? plan.weight * plan.hard_scale : Acc(0);
  alignas(64) Acc keep[L];  // 1 for a valid row, 0 for an ignored one (zero gradients)
  for (int l = 0; l < L; ++l) keep[l] = valid[l] ? Acc(1) : Acc(0);
  for (std::int64_t j = 0; j < cols; ++j)
#pragma omp simd
    for (int l = 0; l < lanes; ++l) {
      const KDRow<Acc> row = lane_row(l);
      const KDSums<Acc> sums{loss[l], aux_s[l], aux_t[l]};
      const Acc sv = xs[j * L + l], tv = xt[j * L + l];
      Acc gs, gt;
      kd_soft_gradients<D>(row, sums, sv, tv, gs, gt);
      const Acc hard = wh == Acc(0) ? Acc(0) : wh * row.hard_gradient(sv, j == label[l]);
      // A select, not a product: an ignored row's gradient is exactly 0 even where its math is not finite.
      grad_s[j * L + l] = keep[l] != Acc(0) ? ws * gs + hard : Acc(0);
      grad_t[j * L + l] = keep[l] != Acc(0) ? ws * gt : Acc(0);
    }
  const bool wide = a.float16_gradients_in_float32;
  if (a.grad_student)
    store_rows_transposed(grad_s, rows, cols, a.grad_student, gradient_dtype(a.student_dtype, wide), r0 * cols);
  if (a.grad_teacher)
    store_rows_transposed(grad_t, rows, cols, a.grad_teacher, gradient_dtype(a.teacher_dtype, wide), r0 * cols);
}

template <typename Acc>
void run(const SoftTargetArgs& a, const CpuExecutor& executor) {
  // Valid rows; the launcher has already checked every label.
  std::int64_t valid_rows = a.rows;
  if (a.labels) {
    valid_rows = 0;
    for (std::int64_t r = 0; r < a.rows; ++r) valid_rows += a.labels[r] != a.ignore_index;
  }
  RowPlan<Acc> plan;
  static_cast<Temperature<Acc>&>(plan) = Temperature<Acc>::of(a.temperature);
  plan.mixture = Mixture<Acc>::of(a.beta);
  plan.weight = a.per_row_loss ? Acc(1)
                               : kd_row_weight<Acc>(a.divide_by_valid_rows, static_cast<Acc>(valid_rows));
  plan.soft_scale = static_cast<Acc>(a.soft_scale);
  plan.hard_scale = static_cast<Acc>(a.hard_scale);
  plan.hard = a.labels != nullptr && a.hard_scale != 0.0;
  plan.hard_numerator = a.temperature == 1.0   ? HardNumerator::Soft
                        : a.temperature == 2.0 ? HardNumerator::SoftSquared
                                               : HardNumerator::Exp;
  const auto streamed = [&](DType input) {  // large (kStreamedOutputBytes)
    const DType g = gradient_dtype(input, a.float16_gradients_in_float32);
    return kStreamingStores && a.rows * a.cols * static_cast<std::int64_t>(dtype_size(g)) >= kStreamedOutputBytes;
  };
  plan.stream_student = a.grad_student && streamed(a.student_dtype);
  plan.stream_teacher = a.grad_teacher && streamed(a.teacher_dtype);

  Acc* row_losses = a.per_row_loss ? static_cast<Acc*>(a.loss) : static_cast<Acc*>(a.workspace);
  const bool short_rows = a.cols <= kShortRowMax;
  // Spread (cpu_kernels.h) in blocks of some 4 MiB of float32 logits: an ignored row costs a zero
  // row, not the math.
  const std::int64_t spread_block = std::max<std::int64_t>(1, (std::int64_t{1} << 20) / a.cols);
  run_rows_spread(executor, a.rows, rows_per_task(a.cols), spread_block, [&](std::int64_t begin, std::int64_t end) {
    if (short_rows) {
      // The rows, then their gradients, transposed.
      const std::int64_t group = a.cols * kShortRowLanes;
      Acc* xs = scratch_row<Acc>(4 * group, 0);
      Acc* xt = xs + group;
      Acc* gs = xt + group;
      Acc* gt = gs + group;
      with_divergence(a.divergence, [&](auto d) {
        for (std::int64_t r = begin; r < end; r += kShortRowLanes) {
          const int rows = static_cast<int>(end - r < kShortRowLanes ? end - r : kShortRowLanes);
          process_short_rows<decltype(d)::value>(a, plan, r, rows, xs, xt, gs, gt, row_losses);
        }
      });
      return;
    }
    RowScratch<Acc> scratch;
    scratch.xs = scratch_row<Acc>(a.cols, 0);
    scratch.xt = scratch_row<Acc>(a.cols, 1);
    const bool keeps = a.divergence == Divergence::ForwardKL || a.divergence == Divergence::MSE;
    scratch.xh = plan.hard && keeps ? scratch_row<Acc>(a.cols, 2) : nullptr;
    scratch.cs = scratch_row<Acc>(a.cols, 3);
    scratch.ct = scratch_row<Acc>(a.cols, 4);
    const std::int64_t s_bytes = static_cast<std::int64_t>(dtype_size(a.student_dtype));
    const std::int64_t t_bytes = static_cast<std::int64_t>(dtype_size(a.teacher_dtype));
    const auto rows = [&](auto d, auto in) {
      for (std::int64_t r = begin; r < end; ++r) {
        const std::int64_t label = a.labels ? a.labels[r] : -1;
        const bool valid = !a.labels || label != a.ignore_index;
        const std::int64_t n = r + 1 < end ? r + 1 : r;  // the row to ask for (RowPrefetch)
        const RowPrefetch next{static_cast<const char*>(a.student) + n * a.student_row_stride * s_bytes,
                               static_cast<const char*>(a.teacher) + n * a.teacher_row_stride * t_bytes, s_bytes,
                               t_bytes};
        row_losses[r] = process_row<decltype(d)::value, decltype(in)>(a, plan, r, valid, label, scratch, next);
      }
    };
    with_divergence(a.divergence, [&](auto d) {
      if constexpr (std::is_same_v<Acc, float>) {
        if (a.student_dtype == a.teacher_dtype && a.student_dtype == DType::BFloat16) return rows(d, BFloat16{});
        if (a.student_dtype == a.teacher_dtype && a.student_dtype == DType::Float16 && kReadInPlace<Half>)
          return rows(d, Half{});
      }
      rows(d, Acc{});
    });
  });
  if (a.per_row_loss) return;
  Acc total = 0;  // in row order: the same result for any thread count
  for (std::int64_t r = 0; r < a.rows; ++r) total += row_losses[r];
  *static_cast<Acc*>(a.loss) = total * plan.weight;
}

}  // namespace

void soft_target_loss(const SoftTargetArgs& args, const CpuExecutor& executor) {
  if (soft_target_uses_double(args)) {
    run<double>(args, executor);
  } else {
    run<float>(args, executor);
  }
}

}  // namespace fusedkd::cpu::FUSEDKD_CPU_ISA

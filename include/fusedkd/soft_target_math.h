// The per-element math of the soft-target losses, written once for the CPU and CUDA kernels.
// A row goes through three steps:
//   A. statistics: max and sum of exponentials of the student at T (and at 1 for the hard
//      cross-entropy) and of the teacher at T (KDStats, merged in any order);
//   B. row sums given A: the divergence l, two auxiliary sums its gradient needs, the label logit
//      (KDSums);
//   C. per-element gradients given A and B.
// Derivations: docs/math.md.
#pragma once

#include <cmath>
#include <type_traits>

#include "fusedkd/math.h"
#include "fusedkd/soft_target.h"

namespace fusedkd {

template <typename Acc>
FUSEDKD_HD Acc max_of(Acc a, Acc b) {
  return a > b ? a : b;
}

// exp(x) for x <= 0.
template <typename Acc>
FUSEDKD_HD Acc exp_nonpositive(Acc x) {
  return exp2_nonpositive(x * Acc(kLog2e));
}

// log(1 + x) for x in [0, 1] (or NaN): the JSD's log-space mixture needs no more. On the CPU a
// branch-free series that vectorises (libm's log1pf does not):
// log(1 + x) = 2 atanh(z) = 2 (z + z^3/3 + ... + z^15/15), z = x / (2 + x) <= 1/3, so the first
// omitted term is below 1e-9 relative.
FUSEDKD_HD float log1p_unit_interval(float x) {
#if defined(__CUDA_ARCH__)
  return log1pf(x);
#else
  const float z = x / (2.0f + x);
  const float z2 = z * z;
  float sum = 1.0f / 15.0f;
  sum = sum * z2 + 1.0f / 13.0f;
  sum = sum * z2 + 1.0f / 11.0f;
  sum = sum * z2 + 1.0f / 9.0f;
  sum = sum * z2 + 1.0f / 7.0f;
  sum = sum * z2 + 1.0f / 5.0f;
  sum = sum * z2 + 1.0f / 3.0f;
  sum = sum * z2 + 1.0f;
  return 2.0f * z * sum;
#endif
}
FUSEDKD_HD double log1p_unit_interval(double x) { return log1p(x); }

// ---------------------------------------------------------------- A. statistics

template <typename Acc>
struct KDStats {
  Acc max_s;       // max_j s_j
  Acc sum_s;       // sum_j exp((s_j - max_s) / T)
  Acc sum_s_hard;  // sum_j exp(s_j - max_s)         (hard cross-entropy, temperature 1)
  Acc max_t;
  Acc sum_t;       // sum_j exp((t_j - max_t) / T)
};

template <typename Acc>
FUSEDKD_HD KDStats<Acc> kd_stats_empty() {
  return {neg_infinity<Acc>(), Acc(0), Acc(0), neg_infinity<Acc>(), Acc(0)};
}

template <typename Acc>
struct KDStatsMerge {
  Acc scale_log2;  // log2(e) / T
  FUSEDKD_HD KDStats<Acc> operator()(const KDStats<Acc>& a, const KDStats<Acc>& b) const {
    KDStats<Acc> r;
    const SoftmaxStatsMerge<Acc> at_t{scale_log2};
    const SoftmaxStatsMerge<Acc> at_one{Acc(kLog2e)};
    const SoftmaxStats<Acc> s = at_t({a.max_s, a.sum_s}, {b.max_s, b.sum_s});
    const SoftmaxStats<Acc> s_hard = at_one({a.max_s, a.sum_s_hard}, {b.max_s, b.sum_s_hard});
    const SoftmaxStats<Acc> t = at_t({a.max_t, a.sum_t}, {b.max_t, b.sum_t});
    r.max_s = s.max;
    r.sum_s = s.sum;
    r.sum_s_hard = s_hard.sum;
    r.max_t = t.max;
    r.sum_t = t.sum;
    return r;
  }
};

// The statistics of a run of elements (a chunk of a row).
template <typename Acc, int N>
FUSEDKD_HD KDStats<Acc> kd_stats_of(const Acc (&s)[N], const Acc (&t)[N], Acc scale_log2, bool hard) {
  KDStats<Acc> r = kd_stats_empty<Acc>();
  FUSEDKD_UNROLL
  for (int k = 0; k < N; ++k) {
    r.max_s = max_of(r.max_s, s[k]);
    r.max_t = max_of(r.max_t, t[k]);
  }
  FUSEDKD_UNROLL
  for (int k = 0; k < N; ++k) {
    r.sum_s += softmax_sum_term(s[k], r.max_s, scale_log2);
    r.sum_t += softmax_sum_term(t[k], r.max_t, scale_log2);
    if (hard) r.sum_s_hard += softmax_sum_term(s[k], r.max_s, Acc(kLog2e));
  }
  return r;
}

// ---------------------------------------------------------------- per-row constants

// The generalized JSD's weights beta and 1 - beta and their logarithms, formed in double from the
// caller's beta and only then rounded: 1 - beta formed in float32 would carry float32's rounding
// of beta, a relative error of up to 2^-24 / (1 - beta) (1.7e-3 at beta = 0.99999). Zero logs
// when beta is 0 or 1 (not a JSD: those run as KL).
template <typename Acc>
struct Mixture {
  Acc beta, one_minus_beta, log_beta, log_one_minus_beta;
  FUSEDKD_HD static Mixture of(double beta) {
    const bool interior = beta > 0.0 && beta < 1.0;
    return {static_cast<Acc>(beta), static_cast<Acc>(1.0 - beta), static_cast<Acc>(interior ? log(beta) : 0.0),
            static_cast<Acc>(interior ? log1p(-beta) : 0.0)};
  }
};

// d CE / d s_j from softmax(s)_j at temperature 1: the probability, less 1 at the label.
template <typename Acc>
FUSEDKD_HD Acc cross_entropy_gradient(Acc prob, bool is_label) {
  return prob - (is_label ? Acc(1) : Acc(0));
}

// d KL(p || q) / d s_j = (q_j - p_j) / T.
template <typename Acc>
FUSEDKD_HD Acc forward_kl_student_gradient(Acc q, Acc p, Acc inv_t) {
  return (q - p) * inv_t;
}

template <typename Acc>
struct KDRow : Mixture<Acc> {
  Acc max_s, max_t;
  Acc log_z_s, log_z_t, log_z_s_hard;
  Acc inv_t;
  Divergence divergence;

  FUSEDKD_HD static KDRow make(const KDStats<Acc>& st, Acc inv_t, Divergence divergence,
                               const Mixture<Acc>& mixture) {
    KDRow row;
    static_cast<Mixture<Acc>&>(row) = mixture;
    row.max_s = st.max_s;
    row.max_t = st.max_t;
    row.log_z_s = log(st.sum_s);
    row.log_z_t = log(st.sum_t);
    row.log_z_s_hard = log(st.sum_s_hard);
    row.inv_t = inv_t;
    row.divergence = divergence;
    return row;
  }
  // Differences are centred on each row's own max before scaling (docs/architecture.md).
  FUSEDKD_HD Acc log_q(Acc s) const { return (s - max_s) * inv_t - log_z_s; }
  FUSEDKD_HD Acc log_p(Acc t) const { return (t - max_t) * inv_t - log_z_t; }
  // softmax(s)_j at temperature 1.
  FUSEDKD_HD Acc hard_prob(Acc s) const { return exp_nonpositive((s - max_s) - log_z_s_hard); }
  // d CE / d s_j: softmax(s)_j at temperature 1, less 1 at the label.
  FUSEDKD_HD Acc hard_gradient(Acc s, bool is_label) const { return cross_entropy_gradient(hard_prob(s), is_label); }
  // Cross-entropy of the row given its label's logit.
  FUSEDKD_HD Acc cross_entropy(Acc label_logit) const {
    return log_z_s_hard + (max_s - label_logit);
  }
  // log m_j = logsumexp(log p_j + log beta, log q_j + log(1 - beta)), formed in log space.
  FUSEDKD_HD Acc log_mixture(Acc lp, Acc lq) const {
    const Acc a = lp + this->log_beta;
    const Acc b = lq + this->log_one_minus_beta;
    const Acc hi = a > b ? a : b;
    const Acc lo = a > b ? b : a;
    if (hi == neg_infinity<Acc>()) return hi;
    return hi + log1p_unit_interval(exp_nonpositive(lo - hi));
  }
};

// ---------------------------------------------------------------- B. row sums

template <typename Acc>
struct KDSums {
  Acc loss;   // the divergence l of the row
  Acc aux_s;  // JSD: sum_j h_j q_j;  MSE: sum_j g_j q_j
  Acc aux_t;  // JSD: sum_j h'_j p_j; MSE: sum_j -g_j p_j
  FUSEDKD_HD KDSums operator+(const KDSums& o) const {
    return {loss + o.loss, aux_s + o.aux_s, aux_t + o.aux_t};
  }
};

// `p * x` that is exactly 0 when p is 0 (x may then be -inf); a NaN p stays NaN.
template <typename Acc>
FUSEDKD_HD Acc weighted(Acc p, Acc x) {
  return p == Acc(0) ? Acc(0) : p * x;
}

// The soft MSE from the two probabilities: element j's share of its row sums (l = sum (q - p)^2,
// aux_s = sum g q, aux_t = -sum g p, g = 2 (q - p)), and its gradients given those sums.
template <typename Acc>
FUSEDKD_HD void mse_accumulate(Acc q, Acc p, KDSums<Acc>& sums) {
  const Acc g = Acc(2) * (q - p);
  sums.loss += (q - p) * (q - p);
  sums.aux_s += g * q;
  sums.aux_t -= g * p;
}

template <typename Acc>
FUSEDKD_HD void mse_gradients(Acc q, Acc p, Acc inv_t, const KDSums<Acc>& sums, Acc& grad_s, Acc& grad_t) {
  const Acc g = Acc(2) * (q - p);
  grad_s = q * inv_t * (g - sums.aux_s);
  grad_t = p * inv_t * (-g - sums.aux_t);
}

// Element j's share of the row sums, for a divergence known at compile time.
template <Divergence D, typename Acc>
FUSEDKD_HD void kd_accumulate(const KDRow<Acc>& row, Acc s, Acc t, KDSums<Acc>& sums) {
  const Acc lq = row.log_q(s);
  const Acc lp = row.log_p(t);
  const Acc q = exp_nonpositive(lq);
  const Acc p = exp_nonpositive(lp);
  if constexpr (D == Divergence::ForwardKL) {
    sums.loss += weighted(p, lp - lq);
  } else if constexpr (D == Divergence::ReverseKL) {
    sums.loss += weighted(q, lq - lp);
  } else if constexpr (D == Divergence::JSD) {
    const Acc lm = row.log_mixture(lp, lq);
    const Acc h_s = row.one_minus_beta * (lq - lm);
    const Acc h_t = row.beta * (lp - lm);
    sums.loss += weighted(p, h_t) + weighted(q, h_s);
    sums.aux_s += weighted(q, h_s);
    sums.aux_t += weighted(p, h_t);
  } else {
    mse_accumulate(q, p, sums);
  }
}

// ---------------------------------------------------------------- B'. the KL loss with the statistics

// The divergences whose loss is gathered with the statistics (kl_cross_term), needing no sweep
// for their row sums.
FUSEDKD_HD constexpr bool is_kl(Divergence d) {
  return d == Divergence::ForwardKL || d == Divergence::ReverseKL;
}

// The KL divergences need no per-element logarithm (docs/math.md): with x the side whose softmax
// weighs the sum (the teacher for the forward KL, the student for the reverse) and y the other,
//   KL = C / Z_x + log Z_y - log Z_x,   C = sum_j exp((x_j - m_x)/T) ((x_j - m_x) - (y_j - m_y))/T,
// so C can be gathered in the statistics sweep. C is relative to the maxima it was computed
// with; moving it to larger maxima M is C' = r (C + Z_x D), r = exp((m_x - M_x)/T),
// D = ((m_x - M_x) - (m_y - M_y))/T, which makes (statistics, C) an online state like
// (max, sum). Terms with x_j = -inf weigh 0; y_j = -inf where x_j is finite makes C (and the KL)
// +inf, as the math says.
template <typename Acc>
struct KLStats {
  KDStats<Acc> stats;
  Acc cross;  // C, relative to stats' maxima
};

// Element j's share of C given the maxima (m_x, m_y) it is taken relative to.
template <typename Acc>
FUSEDKD_HD Acc kl_cross_term(Acc x, Acc m_x, Acc y, Acc m_y, Acc scale_log2, Acc inv_t) {
  const Acc cx = x - m_x;
  const Acc cy = y == neg_infinity<Acc>() ? y : y - m_y;
  // A weight that underflows to 0 contributes 0, as in kd_accumulate (also when cy is -inf).
  const Acc term = weighted(exp2_nonpositive(cx * scale_log2), (cx - cy) * inv_t);
  // Selected last, not returned early: an early return becomes a branch that keeps the CPU
  // loops around this from vectorising.
  return x == neg_infinity<Acc>() ? Acc(0) : term;
}

// The same share where both rows are free of -inf, given the weight w = exp((x - m_x)/T) the
// caller has already formed for its sum (one exponential fewer, no -inf selects). The zero-weight
// rule stays: a logit masked with the dtype's lowest finite value rather than -inf makes the
// log-ratio overflow to -inf at T < 1 while w underflows to 0, and 0 * -inf would be NaN.
template <typename Acc>
FUSEDKD_HD Acc kl_cross_term_finite(Acc w, Acc x, Acc m_x, Acc y, Acc m_y, Acc inv_t) {
  return weighted(w, ((x - m_x) - (y - m_y)) * inv_t);
}

template <typename Acc>
struct KLStatsMerge {
  Acc scale_log2;  // log2(e) / T
  Acc inv_t;
  bool reverse;    // x is the student (reverse KL), else the teacher

  // a's C moved to the maxima of `to`.
  FUSEDKD_HD Acc moved(const KLStats<Acc>& a, const KDStats<Acc>& to) const {
    const Acc m_x = reverse ? a.stats.max_s : a.stats.max_t;
    const Acc z_x = reverse ? a.stats.sum_s : a.stats.sum_t;
    const Acc m_y = reverse ? a.stats.max_t : a.stats.max_s;
    const Acc big_x = reverse ? to.max_s : to.max_t;
    const Acc big_y = reverse ? to.max_t : to.max_s;
    if (z_x == Acc(0)) return Acc(0);  // no weight (empty, or every x_j = -inf)
    const Acc r = exp2_nonpositive((m_x - big_x) * scale_log2);
    // +inf: some x_j finite where y_j = -inf (then m_y may be -inf), unless a's weights underflow
    // against the larger maximum, as that element's weight would; NaN stays NaN below.
    if (a.cross == -neg_infinity<Acc>()) return r == Acc(0) ? Acc(0) : a.cross;
    const Acc shift = ((m_x - big_x) - (m_y - big_y)) * inv_t;
    return r * (a.cross + z_x * shift);
  }
  FUSEDKD_HD KLStats<Acc> operator()(const KLStats<Acc>& a, const KLStats<Acc>& b) const {
    KLStats<Acc> r;
    r.stats = KDStatsMerge<Acc>{scale_log2}(a.stats, b.stats);
    r.cross = moved(a, r.stats) + moved(b, r.stats);
    return r;
  }
};

// The statistics and C of a run of elements, relative to that run's own maxima.
template <typename Acc, int N>
FUSEDKD_HD KLStats<Acc> kl_stats_of(const Acc (&s)[N], const Acc (&t)[N], Acc scale_log2, Acc inv_t, bool hard,
                                    bool reverse) {
  KLStats<Acc> r{kd_stats_of(s, t, scale_log2, hard), Acc(0)};
  FUSEDKD_UNROLL
  for (int k = 0; k < N; ++k) {
    r.cross += reverse ? kl_cross_term(s[k], r.stats.max_s, t[k], r.stats.max_t, scale_log2, inv_t)
                       : kl_cross_term(t[k], r.stats.max_t, s[k], r.stats.max_s, scale_log2, inv_t);
  }
  return r;
}

// The KL divergence from C, the sum Z_x it is relative to, and the two log-normalisers (any
// floating type: the CPU kernels pass their double sums).
template <typename T>
FUSEDKD_HD T kl_from_sums(T cross, T z_x, T log_z_x, T log_z_y) {
  return cross / z_x + (log_z_y - log_z_x);
}

// The KL divergence of the row from its final statistics and C.
template <typename Acc>
FUSEDKD_HD Acc kl_from_cross(const KDStats<Acc>& stats, const KDRow<Acc>& row, Acc cross) {
  const bool reverse = row.divergence == Divergence::ReverseKL;
  return kl_from_sums(cross, reverse ? stats.sum_s : stats.sum_t, reverse ? row.log_z_s : row.log_z_t,
                      reverse ? row.log_z_t : row.log_z_s);
}

// ---------------------------------------------------------------- C. gradients

// d l / d s_j and d l / d t_j for the row's divergence l (unit weight).
template <Divergence D, typename Acc>
FUSEDKD_HD void kd_soft_gradients(const KDRow<Acc>& row, const KDSums<Acc>& sums, Acc s, Acc t,
                                  Acc& grad_s, Acc& grad_t) {
  const Acc lq = row.log_q(s);
  const Acc lp = row.log_p(t);
  const Acc q = exp_nonpositive(lq);
  const Acc p = exp_nonpositive(lp);
  if constexpr (D == Divergence::ForwardKL) {
    grad_s = forward_kl_student_gradient(q, p, row.inv_t);
    grad_t = weighted(p, row.inv_t * ((lp - lq) - sums.loss));
  } else if constexpr (D == Divergence::ReverseKL) {
    grad_s = weighted(q, row.inv_t * ((lq - lp) - sums.loss));
    grad_t = (p - q) * row.inv_t;
  } else if constexpr (D == Divergence::JSD) {
    const Acc lm = row.log_mixture(lp, lq);
    grad_s = weighted(q, row.inv_t * (row.one_minus_beta * (lq - lm) - sums.aux_s));
    grad_t = weighted(p, row.inv_t * (row.beta * (lp - lm) - sums.aux_t));
  } else {
    mse_gradients(q, p, row.inv_t, sums, grad_s, grad_t);
  }
}

// Calls fn(std::integral_constant<Divergence, D>{}) for the divergence known at run time, so that
// the element loops inside fn are compiled once per divergence with no branch in them (the CPU
// kernels pick per call, the CUDA kernels per row, uniformly across the row's threads).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename Fn>
FUSEDKD_HD void with_divergence(Divergence d, Fn&& fn) {
  switch (d) {
    case Divergence::ForwardKL: return fn(std::integral_constant<Divergence, Divergence::ForwardKL>{});
    case Divergence::ReverseKL: return fn(std::integral_constant<Divergence, Divergence::ReverseKL>{});
    case Divergence::JSD: return fn(std::integral_constant<Divergence, Divergence::JSD>{});
    case Divergence::MSE: return fn(std::integral_constant<Divergence, Divergence::MSE>{});
  }
}

// How much each valid row weighs in the total: 1/n when dividing by the valid rows (0 when
// there are none: the loss and every gradient are then 0), else 1.
template <typename Acc>
FUSEDKD_HD Acc kd_row_weight(bool divide, Acc valid_rows) {
  if (!divide) return Acc(1);
  return valid_rows > Acc(0) ? reciprocal(valid_rows) : Acc(0);
}

}  // namespace fusedkd

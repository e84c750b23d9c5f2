"""The soft-target op families of test_randomized.py (softmax_t, log_softmax_t, kl_div, jsd,
soft_mse, kd_loss): random calls, the composites they must equal (NaN-safe where a probability is
0: the spec's 0 * -inf = 0), and the noise floors of their outputs."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from randomized_check import (F16, F64, INF, NOISE_K, UNIT, choose_grads, expand_to, fin, loss_dtype, maybe_nan,
                              one_hot_rows, place, prod, reduce_magnitude, row_coefficients, row_mask,
                              soft_magnitudes, softmax_terms, superset_mask, tnorm)

SOFT_REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def kl_rows(lp, lq):
    """sum_j p_j (log p_j - log q_j) per row, p = exp(lp)."""
    p = lp.exp()
    zero = p == 0
    return (p * (torch.where(zero, 0.0, lp) - torch.where(zero, 0.0, lq))).sum(-1)


def jsd_rows(lq, lp, beta):
    """The spec's generalized JSD per row, log m formed in log space (beta 0: KL(p||q), 1: KL(q||p))."""
    if beta == 0.0:
        return kl_rows(lp, lq)
    if beta == 1.0:
        return kl_rows(lq, lp)
    one_minus_beta = 1.0 - beta
    p, q = lp.exp(), lq.exp()
    both = (p == 0) & (q == 0)
    a = torch.where(both, 0.0, lp + math.log(beta))
    b = torch.where(both, 0.0, lq + math.log(one_minus_beta))
    lm = torch.logaddexp(a, b)
    tp = p * (torch.where(p == 0, 0.0, lp) - torch.where(p == 0, 0.0, lm))
    tq = q * (torch.where(q == 0, 0.0, lq) - torch.where(q == 0, 0.0, lm))
    return beta * tp.sum(-1) + one_minus_beta * tq.sum(-1)


def mse_rows(lq, lp):
    """sum_j (q_j - p_j)^2 per row."""
    return (lq.exp() - lp.exp()).pow(2).sum(-1)


def jsd_weights(divergence, beta):
    """Factors of the student's and the teacher's gradient (and of their noise): the generalized
    JSD's h_j carry 1 - beta and beta (beta 0 and 1 are KL, both 1)."""
    return (1.0 - beta, beta) if divergence == "jsd" and 0.0 < beta < 1.0 else (1.0, 1.0)


def divergence_rows(name, lq, lp, beta):
    if name == "kl":
        return kl_rows(lp, lq)
    if name == "reverse_kl":
        return kl_rows(lq, lp)
    if name == "jsd":
        return jsd_rows(lq, lp, beta)
    return mse_rows(lq, lp)


def kd_soft_composite(divergence, T, beta=0.5):
    """kd_loss(s, t, temperature=T, divergence=divergence) with no labels, as PyTorch composes it:
    the divergence's rows summed over / R (over / (R * V) for "mse")."""
    def f(s, t):
        lq, lp = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
        rows = divergence_rows(divergence, lq, lp, beta)
        return rows.sum() / (lq.numel() if divergence == "mse" else rows.numel())

    return f


def reduce_rows(rows, reduction, V):
    """The spec's reductions over rows ("mean" is torch's elementwise mean: / (R * V))."""
    R = rows.numel()
    if reduction == "none":
        return rows
    total = rows.sum()
    return {"sum": total, "mean": total / (R * V), "batchmean": total / R}[reduction]


def logit_values(gen, shape, dtype, huge_ok=True):
    """Random logits in float64 (rounded to ``dtype`` when placed): a random scale, sometimes a
    common offset (max-subtraction), sometimes huge finite entries."""
    x = gen.randn(shape) * gen.loguniform(0.05, 30.0)
    if gen.chance(0.15):
        x = x + gen.pick([-1, 1]) * gen.loguniform(1.0, 1000.0)
    if huge_ok and gen.chance(0.1) and x.numel():
        big = 60000.0 if dtype == F16 else 1e4
        m = gen.rand(shape) < gen.loguniform(0.005, 0.3)
        sign = torch.where(gen.rand(shape) < 0.5, -1.0, 1.0).to(F64)
        x = torch.where(m, sign * big, x)
    return x


def logits_shape(gen):
    """[*, V]: 0 to 3 leading dims (sometimes one long, sometimes one 0), V mostly 1..300, rarely
    up to 5000 or 100k (then few rows)."""
    nlead = gen.pick([0, 1, 2, 3], [1, 4, 3, 2])
    lead = [gen.int(1, 6) for _ in range(nlead)]
    if nlead and gen.chance(0.1):
        lead[gen.int(0, nlead - 1)] = gen.int(16, 96)
    if nlead and gen.chance(0.05):
        lead[gen.int(0, nlead - 1)] = 0
    u = gen.r.random()
    if u < 0.06:
        V = 1
    elif u < 0.92:
        V = int(gen.loguniform(2, 301))
    elif u < 0.985:
        V = int(gen.loguniform(300, 5000))
    else:
        V = int(gen.loguniform(5000, 100_000))
    limit = 60_000 if V <= 5000 else 2 * V + 1
    while prod(lead) * V > limit:
        k = max(range(len(lead)), key=lambda d: lead[d])
        lead[k] = max(1, lead[k] // 2)
    return tuple(lead) + (V,)


def soft_pair(case, mask_rule):
    """Student and teacher logits for a two-input soft-target op. ``mask_rule``: which -inf
    patterns keep the loss finite: "fwd" (student mask within the teacher's: KL(p||q)), "rev"
    (teacher's within the student's: KL(q||p)), "any"."""
    gen = case.gen
    shape = logits_shape(gen)
    lead, V = shape[:-1], shape[-1]
    sd, td = gen.dtype_pair()
    tshape = shape
    if lead and gen.chance(0.15):
        dims = [d for d in range(len(lead)) if gen.chance(0.6)] or [0]
        tshape = tuple(1 if d in dims else n for d, n in enumerate(lead)) + (V,)
        case.notes.append(f"teacher expanded from {tshape}")
    t = logit_values(gen, tshape, td)
    relation = gen.pick(["independent", "close", "equal"], [6, 3, 1])
    if relation == "independent":
        s = logit_values(gen, shape, sd)
    else:
        s = t.expand(shape).clone()
        if relation == "close":
            s = s + gen.randn(shape) * gen.loguniform(1e-4, 1.0)
        case.notes.append(f"student {relation} to the teacher")
    modes = ["same"] + {"fwd": ["s_in_t"], "rev": ["t_in_s"], "any": ["s_in_t", "t_in_s", "independent"]}[mask_rule]
    mode = gen.pick(["none", *modes], [10] + [6 / len(modes)] * len(modes))
    if mode != "none":
        mt = torch.zeros(tshape, dtype=torch.bool) if mode == "t_in_s" and gen.chance(0.3) else row_mask(gen, tshape)
        if mode == "same":
            ms = mt.expand(shape)
        elif mode == "s_in_t":
            ms = mt.expand(shape) & (gen.rand(shape) < gen.pick([0.0, 0.5, 0.9]))
        elif mode == "t_in_s":
            ms = superset_mask(gen, mt, shape)
        else:
            ms = row_mask(gen, shape)
        t = t.masked_fill(mt, -INF)
        s = s.masked_fill(ms, -INF)
        case.notes.append(f"-inf masks: {mode} (student {int(ms.sum())}, teacher {int(mt.sum())} entries)")
    else:
        ms = torch.zeros(shape, dtype=torch.bool)
    s = maybe_nan(gen, case, s, "the student")
    t = maybe_nan(gen, case, t, "the teacher")
    S, ls = place(gen, s, sd, case.device)
    Tb, lt = place(gen, t, td, case.device)
    case.add("student_logits", S, ls)
    case.add("teacher_logits", expand_to(Tb, shape), lt + ("+expand" if tshape != shape else ""))
    case.grad = choose_grads(gen, ["student_logits", "teacher_logits"], [0.8, 0.3])
    return shape, ms


def pick_beta(gen):
    """The generalized JSD's beta: 0, 1 (the two KLs), 0.5, uniform, and within 1e-2 of 0 or 1."""
    near = gen.loguniform(1e-6, 1e-2)
    return gen.pick([0.0, 1.0, 0.5, gen.r.uniform(0.0, 1.0), near, 1 - near], [2, 2, 1, 3, 1, 1])


def mask_rule_for(divergence, beta):
    """Which -inf masks keep this divergence finite (see soft_pair)."""
    if divergence == "kl" or (divergence == "jsd" and beta == 0.0):
        return "fwd"
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
        return "rev"
    return "any"


def make_softmax(case, log):
    gen = case.gen
    shape = logits_shape(gen)
    dtype = gen.dtype()
    T = gen.temperature()
    x = logit_values(gen, shape, dtype)
    if gen.chance(0.4):
        x = x.masked_fill(row_mask(gen, shape), -INF)
        case.notes.append("-inf mask")
    x = maybe_nan(gen, case, x, "the logits")
    X, lay = place(gen, x, dtype, case.device)
    case.add("logits", X, lay)
    case.args = {"temperature": T}
    case.grad = ["logits"] if gen.chance(0.85) else []
    case.out_dtype = dtype
    torch_fn = F.log_softmax if log else F.softmax
    case.op_name = "log_softmax_t" if log else "softmax_t"
    case.composite = lambda logits: torch_fn(logits / T, -1)

    def noise(ins, w, eps):
        x = ins["logits"]
        y, a = softmax_terms(x, T, dtype == F64)
        out = {"forward": eps * tnorm(torch.where(torch.isfinite(x), a, 0.0) if log else y * a)}
        if w is not None:  # the backward reads y, the output, rounded to the input's dtype (as torch's)
            eps = max(eps, NOISE_K * UNIT[dtype])
            wa = w.abs()
            if log:
                g = wa + y * a * wa.sum(-1, keepdim=True)
            else:
                g = y * (a * (wa + (wa * y).sum(-1, keepdim=True)) + (wa * y * a).sum(-1, keepdim=True))
            out["logits"] = eps * tnorm(g) / T
        return out

    case.noise = noise


def make_pair_loss(case):
    gen = case.gen
    fam = case.family
    T = gen.temperature()
    if fam == "kl_div":
        reverse = gen.chance(0.5)
        rule = "rev" if reverse else "fwd"
    elif fam == "jsd":
        beta = pick_beta(gen)
        rule = mask_rule_for("jsd", beta)
    else:
        rule = "any"
    shape, _ = soft_pair(case, rule)
    case.out_dtype = loss_dtype(case.tensors["student_logits"], case.tensors["teacher_logits"])
    V = shape[-1]
    R = prod(shape[:-1])
    reduction = gen.pick(SOFT_REDUCTIONS)
    if fam == "kl_div":
        case.args = {"temperature": T, "reduction": reduction, "reverse": reverse}

        def rows(lq, lp):
            return kl_rows(lq, lp) if reverse else kl_rows(lp, lq)
    elif fam == "jsd":
        case.args = {"temperature": T, "beta": beta, "reduction": reduction}

        def rows(lq, lp):
            return jsd_rows(lq, lp, beta)
    else:
        case.args = {"temperature": T, "reduction": reduction}
        rows = mse_rows

    def composite(student_logits, teacher_logits):
        lq = F.log_softmax(student_logits / T, -1)
        lp = F.log_softmax(teacher_logits / T, -1)
        return reduce_rows(rows(lq, lp), reduction, V)

    case.composite = composite
    ws, wt = jsd_weights(fam, beta) if fam == "jsd" else (1.0, 1.0)

    def noise(ins, w, eps):
        mag, gmag = soft_magnitudes(ins["student_logits"], ins["teacher_logits"], T, case.out_dtype == F64)
        c, f = row_coefficients(w, reduction, R, V)
        out = {"forward": eps * reduce_magnitude(mag.sum(-1), reduction, f)}
        if w is not None:
            g = eps * tnorm(gmag * c.unsqueeze(-1))
            out.update(student_logits=g * ws, teacher_logits=g * wt)
        return out

    case.noise = noise


def make_kd_loss(case):
    gen = case.gen
    divergence = gen.pick(["kl", "reverse_kl", "jsd", "mse"])
    beta = pick_beta(gen) if divergence == "jsd" else gen.r.uniform(0.0, 1.0)  # (ignored but for "jsd")
    shape, ms = soft_pair(case, mask_rule_for(divergence, beta))
    V = shape[-1]
    lead = shape[:-1]
    T = gen.temperature()
    soft_weight = gen.pick([1.0, 0.0, gen.r.uniform(0.0, 2.0)], [2, 1, 4])
    hard_weight = gen.pick([0.0, 1.0, gen.r.uniform(0.0, 2.0)], [4, 2, 3])
    t2_scale = gen.chance(0.5)
    ignore_index = gen.pick([-100, -1, gen.int(0, V - 1)], [6, 2, 2])
    labels = None
    if hard_weight != 0.0 or gen.chance(0.5):
        # a label is never a -inf column of the student (CE would be inf); p_ignore 1: all ignored
        y = ((~ms).to(F64) * (gen.rand(shape) + 0.5)).argmax(-1)
        p_ignore = gen.pick([0.0, 0.3, 1.0], [4, 4, 1])
        y = torch.where(gen.rand(lead) < p_ignore, torch.full_like(y, ignore_index), y)
        ldtype = gen.pick([torch.int64, torch.int32, torch.int16], [6, 3, 1 if V < 30000 else 0])
        labels, ll = place(gen, y, ldtype, case.device, fill=V + 1000)
        case.add("labels", labels, ll)
        n_valid = int((y != ignore_index).sum())
        case.notes.append(f"{n_valid} of {prod(lead)} rows labelled")
    else:
        case.add("labels", None, "")
    case.args = {"temperature": T, "soft_weight": soft_weight, "hard_weight": hard_weight, "divergence": divergence,
                 "beta": beta, "ignore_index": ignore_index, "t2_scale": t2_scale}

    case.out_dtype = loss_dtype(case.tensors["student_logits"], case.tensors["teacher_logits"])
    ws, wt = jsd_weights(divergence, beta)

    def composite(student_logits, teacher_logits, labels):
        s2 = student_logits.reshape(-1, V)
        t2 = teacher_logits.reshape(-1, V)
        if labels is None:
            valid = torch.ones(s2.shape[0], dtype=torch.bool, device=s2.device)
        else:
            y = labels.reshape(-1).long()
            valid = y != ignore_index
        n = max(int(valid.sum()), 1)
        sv, tv = s2[valid], t2[valid]
        lq = F.log_softmax(sv / T, -1)
        lp = F.log_softmax(tv / T, -1)
        d = divergence_rows(divergence, lq, lp, beta).sum() / (n * (V if divergence == "mse" else 1))
        loss = soft_weight * (T * T if t2_scale else 1.0) * d
        if hard_weight != 0.0:
            loss = loss + hard_weight * F.cross_entropy(sv, y[valid], reduction="sum") / n
        return loss

    def noise(ins, w, eps):
        s2 = ins["student_logits"].reshape(-1, V)
        t2 = ins["teacher_logits"].reshape(-1, V)
        valid = torch.ones(s2.shape[0], dtype=torch.bool, device=s2.device)
        if ins["labels"] is not None:
            y = ins["labels"].reshape(-1).long()
            valid = y != ignore_index
        n = max(int(valid.sum()), 1)
        c_d = abs(soft_weight) * (T * T if t2_scale else 1.0) / (n * (V if divergence == "mse" else 1))
        mag, gmag = soft_magnitudes(s2[valid], t2[valid], T, case.out_dtype == F64)
        fwd, ce_grad = c_d * float(mag.sum()), 0.0
        if hard_weight != 0.0:
            q1, a1 = softmax_terms(s2[valid], 1.0, case.out_dtype == F64)
            yv = y[valid].unsqueeze(1)
            fwd += abs(hard_weight) / n * float(fin(a1.gather(1, yv)).sum())
            ce_grad = abs(hard_weight) / n * tnorm(q1 * a1 + one_hot_rows(yv.cpu(), q1.shape).to(q1))
        out = {"forward": eps * fwd}
        if w is not None:
            wa = float(w.abs())
            d_grad = eps * wa * c_d * tnorm(gmag)
            out.update(teacher_logits=d_grad * wt, student_logits=d_grad * ws + eps * wa * ce_grad)
        return out

    case.composite = composite
    case.noise = noise

"""The feature-map op families of test_randomized.py (feature_mse, attention_transfer,
similarity_preserving, projected_feature_mse): random calls, the composites they must equal, and
the noise floors of their outputs."""
from __future__ import annotations

import torch

from randomized_check import (F16, F64, choose_grads, expand_to, loss_dtype, place, prod, reduce_magnitude,
                              tnorm)
from test_feature import attention_map, gram

FEATURE_REDUCTIONS = ["none", "sum", "mean"]
ATTENTION_REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def mse(a, b, reduction):
    """F.mse_loss(a, b, reduction), for mixed dtypes too (torch's promotion)."""
    d = (a - b).pow(2)
    return {"none": d, "sum": d.sum(), "mean": d.mean()}[reduction]


def feature_values(gen, shape, dtype, huge_ok=True):
    """Random features in float64: a random scale, rarely +-1e4 entries (not in float16)."""
    x = gen.randn(shape) * gen.loguniform(0.01, 100.0)
    if huge_ok and dtype != F16 and gen.chance(0.05) and prod(shape):
        x = torch.where(gen.rand(shape) < 0.1, torch.where(gen.rand(shape) < 0.5, -1e4, 1e4).to(F64), x)
    return x


def feature_teacher(gen, case, s, shape, dtype):
    """Teacher values of ``shape``: independent, close to the student, or broadcast (expanded)."""
    kind = gen.pick(["independent", "close", "expanded"], [6, 3 if s is not None else 0, 1])
    if kind == "close":
        case.notes.append("teacher close to the student")
        return s + gen.randn(shape) * gen.loguniform(1e-4, 1.0), shape
    if kind == "expanded" and len(shape) >= 1:
        small = tuple(1 if gen.chance(0.5) else n for n in shape)
        case.notes.append(f"teacher expanded from {small}")
        return feature_values(gen, small, dtype), small
    return feature_values(gen, shape, dtype), shape


def spatial_shape(gen, max_dims=3):
    nsp = gen.pick(range(max_dims + 1), [1, 2, 5, 2][: max_dims + 1])
    return tuple(gen.int(1, 7) for _ in range(nsp))


def batch_size(gen, hi=5):
    return 0 if gen.chance(0.05) else gen.int(1, hi)


def make_feature_mse(case):
    gen = case.gen
    nd = gen.pick([1, 2, 3, 4, 5], [2, 2, 2, 4, 1])
    shape = [gen.int(0 if gen.chance(0.03) else 1, 7) for _ in range(nd)]
    if gen.chance(0.05):
        shape[gen.int(0, nd - 1)] = gen.int(100, 3000)
    while prod(shape) > 200_000:
        k = max(range(nd), key=lambda d: shape[d])
        shape[k] //= 2
    shape = tuple(shape)
    sd, td = gen.dtype_pair()
    s = feature_values(gen, shape, sd)
    t, tshape = feature_teacher(gen, case, s, shape, td)
    S, ls = place(gen, s, sd, case.device, channels_ok=True)
    Tt, lt = place(gen, t, td, case.device, channels_ok=True)
    case.add("student", S, ls)
    case.add("teacher", expand_to(Tt, shape), lt + ("+expand" if tshape != shape else ""))
    case.grad = choose_grads(gen, ["student", "teacher"], [0.8, 0.3])
    reduction = gen.pick(FEATURE_REDUCTIONS)
    case.args = {"reduction": reduction}
    case.composite = lambda student, teacher: mse(student, teacher, reduction)

    def noise(ins, w, eps):
        s_, t_ = ins["student"], ins["teacher"]
        d, a = (s_ - t_).abs(), s_.abs() + t_.abs()
        elem = eps * 2 * d * a + eps**2 * a * a
        f = 1.0 / max(elem.numel(), 1) if reduction == "mean" else 1.0
        out = {"forward": reduce_magnitude(elem, reduction, f)}
        if w is not None:  # 2 (s - t) c: a difference rounded once, then scaled: relative error only
            c = w.abs() if reduction == "none" else abs(float(w)) * f
            out["student"] = out["teacher"] = tnorm(eps**2 * a * c)
        return out

    case.noise = noise
    case.out_dtype = loss_dtype(S, Tt)


def at_map(x, p):
    # test_feature's attention_map, except for N = 0 (reshape(0, -1) is ambiguous to torch)
    return attention_map(x, p) if x.shape[0] else x.abs().pow(p).mean(1).reshape(0, prod(x.shape[2:]))


def add_student_and_teacher(case, s, sd, t, td):
    """Places the two maps (any layout, channels-last among them) as the case's student and
    teacher, picks which need a gradient; returns the placed tensors."""
    S, ls = place(case.gen, s, sd, case.device, channels_ok=True)
    Tt, lt = place(case.gen, t, td, case.device, channels_ok=True)
    case.add("student", S, ls)
    case.add("teacher", Tt, lt)
    case.grad = choose_grads(case.gen, ["student", "teacher"], [0.8, 0.4])
    return S, Tt


def make_attention_transfer(case):
    gen = case.gen
    N, cs, ct = batch_size(gen), gen.int(1, 8), gen.int(1, 8)
    sp = spatial_shape(gen)
    sd, td = gen.dtype_pair()
    p = gen.pick([1.0, 2.0, 3.5, gen.r.uniform(1.0, 4.0)], [3, 3, 3, 1])
    s = feature_values(gen, (N, cs) + sp, sd)
    t = feature_values(gen, (N, ct) + sp, td)
    if N and gen.chance(0.08):
        who = gen.pick(["student", "teacher"])
        n = gen.int(0, N - 1)
        (s if who == "student" else t)[n] = 0.0
        case.notes.append(f"{who} sample {n} all zero")
    if cs == ct and gen.chance(0.2):
        s = t + gen.randn(t.shape) * gen.loguniform(1e-4, 1.0)
        case.notes.append("student close to the teacher")
    S, Tt = add_student_and_teacher(case, s, sd, t, td)
    reduction = gen.pick(ATTENTION_REDUCTIONS)
    case.args = {"p": p, "reduction": reduction}

    def composite(student, teacher):
        d = (at_map(student, p) - at_map(teacher, p)).pow(2)
        return {"mean": d.mean(), "sum": d.sum(), "batchmean": d.sum() / N, "none": d.sum(1)}[reduction]

    def noise(ins, w, eps):
        maps = {k: at_map(ins[k], p) for k in ("student", "teacher")}
        d = (maps["student"] - maps["teacher"]).abs()
        a = maps["student"].abs() + maps["teacher"].abs()
        S = a.shape[1]
        f = {"none": 1.0, "sum": 1.0, "batchmean": 1.0 / max(N, 1), "mean": 1.0 / max(N * S, 1)}[reduction]
        out = {"forward": reduce_magnitude((eps * 2 * d * a + eps**2 * a * a).sum(1), reduction, f)}
        if w is not None:
            c = (w.abs() if reduction == "none" else (w.abs() * f).expand(N)).reshape(N, 1)
            for k, x in ins.items():
                ax = maps[k].abs()
                v = x.abs().pow(p).mean(1).reshape(N, -1 if N else 0)
                nv = v.norm(dim=1, keepdim=True)
                inv = torch.where(nv > 0, 1.0 / nv, 0.0)
                m_v = eps * 2 * c * (a + d + ax * (d * ax).sum(1, keepdim=True)) * inv
                dv_dx = p * x.abs().pow(p - 1) / x.shape[1]
                out[k] = tnorm(m_v.reshape(x.shape[:1] + (1,) + x.shape[2:]) * dv_dx)
        return out

    case.composite = composite
    case.noise = noise
    case.out_dtype = loss_dtype(S, Tt)


def make_similarity_preserving(case):
    gen = case.gen
    N = 0 if gen.chance(0.04) else gen.pick([gen.int(1, 10), gen.int(11, 64)], [9, 1])
    fs = tuple(gen.int(1, 9) for _ in range(gen.pick([1, 2, 3], [2, 2, 3])))
    ft = tuple(gen.int(1, 9) for _ in range(gen.pick([1, 2, 3], [2, 2, 3])))
    sd, td = gen.dtype_pair()
    s = feature_values(gen, (N,) + fs, sd)
    t = feature_values(gen, (N,) + ft, td)
    if fs == ft and gen.chance(0.3):
        s = t + gen.randn(t.shape) * gen.loguniform(1e-4, 1.0)
        case.notes.append("student close to the teacher")
    S, Tt = add_student_and_teacher(case, s, sd, t, td)

    def composite(student, teacher):
        if N == 0:
            return (student.sum() + teacher.sum()) * 0.0 / 0.0
        return (gram(student) - gram(teacher)).pow(2).sum() / N**2

    def noise(ins, w, eps):
        if N == 0:
            return {"forward": 0.0, "student": 0.0, "teacher": 0.0}
        parts = {}
        for k, x in ins.items():
            f_ = x.reshape(N, -1)
            g = f_ @ f_.t()
            nr = g.norm(dim=1, keepdim=True)
            inv = torch.where(nr > 0, 1.0 / nr, 0.0)
            gn = g * inv
            parts[k] = (f_, gn, (f_.abs() @ f_.abs().t()) * inv + gn.abs(), inv)
        d = (parts["student"][1] - parts["teacher"][1]).abs()
        e = parts["student"][2] + parts["teacher"][2]
        out = {"forward": float((eps * 2 * d * e + eps**2 * e * e).sum()) / N**2}
        if w is not None:
            gm = eps * 2 * (d + e) / N**2
            for k, (f_, gn, _, inv) in parts.items():
                bm = (gm + gn.abs() * (gm * gn.abs()).sum(1, keepdim=True)) * inv
                out[k] = float(w.abs()) * tnorm((bm + bm.t()) @ f_.abs())
        return out

    case.composite = composite
    case.noise = noise
    case.out_dtype = loss_dtype(S, Tt)


def make_projected_feature_mse(case):
    gen = case.gen
    N, cs, ct = batch_size(gen, 4), gen.int(1, 8), gen.int(1, 8)
    sp = spatial_shape(gen)
    sd = gen.dtype()
    wd = sd if gen.chance(0.75) else gen.dtype()
    td = sd if gen.chance(0.7) else gen.dtype()
    s = feature_values(gen, (N, cs) + sp, sd, huge_ok=False)
    w = gen.randn((ct, cs)) * gen.loguniform(0.05, 3.0)
    with_bias = gen.chance(0.65)
    b = gen.randn((ct,)) if with_bias else None
    conv_w = bool(sp) and gen.chance(0.3)
    S, ls = place(gen, s, sd, case.device, channels_ok=True)
    W, lw = place(gen, w.reshape((ct, cs) + (1,) * len(sp)) if conv_w else w, wd, case.device)
    case.add("student", S, ls)
    case.add("weight", W, lw)
    case.add("bias", *(place(gen, b, wd, case.device) if with_bias else (None, "")))
    y = torch.einsum("oc,nc...->no...", w, s) + (b.reshape((1, ct) + (1,) * len(sp)) if with_bias else 0.0)
    if gen.chance(0.3):
        t = y + gen.randn(y.shape) * gen.loguniform(1e-4, 1.0)  # a good regressor: cancellation
        case.notes.append("teacher close to the projection")
        tshape = t.shape
    else:
        t, tshape = feature_teacher(gen, case, None, (N, ct) + sp, td)
    Tt, lt = place(gen, t, td, case.device, channels_ok=True)
    full = (N, ct) + sp
    case.add("teacher", expand_to(Tt, full), lt + ("+expand" if tuple(tshape) != full else ""))
    case.grad = choose_grads(gen, ["student", "weight", "bias", "teacher"], [0.8, 0.8, 0.8 * with_bias, 0.25])
    reduction = gen.pick(FEATURE_REDUCTIONS)
    case.args = {"reduction": reduction}

    def composite(student, weight, bias, teacher):
        dt = torch.promote_types(student.dtype, weight.dtype)
        if bias is not None:
            dt = torch.promote_types(dt, bias.dtype)
        x = student.to(dt).reshape(N, cs, prod(sp))
        y = torch.matmul(weight.to(dt).reshape(ct, cs), x).reshape((N, ct) + sp)
        if bias is not None:
            y = y + bias.to(dt).reshape((1, ct) + (1,) * len(sp))
        return mse(y, teacher, reduction)

    def noise(ins, w, eps):
        S = prod(sp)
        x3 = ins["student"].reshape(N, cs, S)
        w2 = ins["weight"].reshape(ct, cs)
        y, my = w2 @ x3, w2.abs() @ x3.abs()
        if ins["bias"] is not None:
            y, my = y + ins["bias"].reshape(1, ct, 1), my + ins["bias"].abs().reshape(1, ct, 1)
        t3 = ins["teacher"].reshape(N, ct, S)
        d, a = (y - t3).abs(), my + t3.abs()
        elem = eps * 2 * d * a + eps**2 * a * a
        f = 1.0 / max(elem.numel(), 1) if reduction == "mean" else 1.0
        out = {"forward": reduce_magnitude(elem, reduction, f)}
        if w is not None:
            c = w.abs().reshape(N, ct, S) if reduction == "none" else abs(float(w)) * f
            gm = 2 * c * eps * (a + 2 * d)
            out.update(student=tnorm(w2.abs().t() @ gm), weight=tnorm((gm @ x3.abs().transpose(1, 2)).sum(0)),
                       bias=tnorm(gm.sum((0, 2))), teacher=tnorm(gm))
        return out

    case.composite = composite
    case.noise = noise
    case.out_dtype = loss_dtype(S, W, case.tensors["bias"], Tt)

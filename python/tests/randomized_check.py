"""The machinery of test_randomized.py: random values, layouts and -inf masks, the Case record,
the noise floors, and the check of one case against its float64 composite (see that file's
docstring for the error measure and the tolerances)."""
from __future__ import annotations

import math
import random

import torch

import fusedkd

ops = torch.ops.fusedkd
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
DTYPES = [F32, F64, F16, BF16]
TOL = {F64: 1e-10, F32: 1e-5, F16: 4e-3, BF16: 1e-2}
UNIT = {F64: 2.0**-53, F32: 2.0**-24, F16: 2.0**-11, BF16: 2.0**-8}  # unit roundoff
NOISE_K = 4  # a noise floor is NOISE_K * u * (the magnitude of the terms an output is formed of)
INF = math.inf

# ----------------------------------------------------------------------------- random values

class Gen:
    """The random source of one case: Python's Random for choices, a torch Generator for tensors."""

    def __init__(self, seed, index):
        self.r = random.Random(f"fusedkd-randomized:{seed}:{index}")
        self.g = torch.Generator().manual_seed(self.r.getrandbits(62))

    def chance(self, p):
        return self.r.random() < p

    def pick(self, seq, weights=None):
        return self.r.choices(list(seq), weights)[0]

    def int(self, lo, hi):
        return self.r.randint(lo, hi)

    def loguniform(self, lo, hi):
        return math.exp(self.r.uniform(math.log(lo), math.log(hi)))

    def randn(self, shape):
        return torch.randn(tuple(shape), generator=self.g, dtype=F64)

    def rand(self, shape):
        return torch.rand(tuple(shape), generator=self.g, dtype=F64)

    def randint(self, hi, shape):
        return torch.randint(0, hi, tuple(shape), generator=self.g)

    def dtype(self):
        return self.pick(DTYPES, [4, 3, 2, 2])

    def dtype_pair(self):
        a = self.dtype()
        return a, (a if self.chance(0.7) else self.dtype())

    def temperature(self):
        return 1.0 if self.chance(0.12) else self.loguniform(0.05, 100.0)


def prod(xs):
    out = 1
    for x in xs:
        out *= x
    return out


def contiguous_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def place(gen, values, dtype, device, channels_ok=False, fill=math.nan):
    """A view of the logical ``values`` in ``dtype`` with a random layout; the rest of its
    container holds ``fill`` (NaN), so a read outside the view poisons the result."""
    shape = tuple(values.shape)
    nd = len(shape)
    kinds = ["contiguous"] * 4 + ["offset"]
    if nd >= 1:
        kinds += ["narrow_last", "step"]
    if nd >= 2:
        kinds += ["transpose", "transpose"]
    if nd >= 3:
        kinds += ["permute"]
    if channels_ok and nd in (4, 5):
        kinds += ["channels_last"] * 3
    kind = gen.pick(kinds)
    opts = dict(dtype=dtype, device=device)
    if kind == "contiguous":
        base = torch.empty(shape, **opts)
        view = base
    elif kind == "offset":
        off = gen.int(1, 9)
        base = torch.empty(prod(shape) + off + gen.int(0, 5), **opts)
        view = base.as_strided(shape, contiguous_strides(shape), off)
    elif kind == "narrow_last":
        extra = gen.int(1, 11)
        off = gen.int(0, extra)
        base = torch.empty(shape[:-1] + (shape[-1] + extra,), **opts)
        view = base[..., off:off + shape[-1]]
        kind += f"(+{extra},@{off})"
    elif kind == "step":
        d = nd - 1 if gen.chance(0.6) else gen.int(0, nd - 1)
        step = gen.int(2, 3)
        big = list(shape)
        big[d] = shape[d] * step
        base = torch.empty(big, **opts)
        index = [slice(None)] * nd
        index[d] = slice(None, None, step)
        view = base[tuple(index)]
        kind += f"(dim {d}, {step})"
    elif kind == "transpose":
        i, j = (nd - 2, nd - 1) if gen.chance(0.6) else sorted(gen.r.sample(range(nd), 2))
        big = list(shape)
        big[i], big[j] = big[j], big[i]
        base = torch.empty(big, **opts)
        view = base.transpose(i, j)
        kind += f"({i},{j})"
    elif kind == "permute":
        perm = list(range(nd))
        gen.r.shuffle(perm)
        inverse = [perm.index(k) for k in range(nd)]
        base = torch.empty([shape[p] for p in perm], **opts)
        view = base.permute(inverse)
        kind += f"{tuple(perm)}"
    else:  # channels_last
        fmt = torch.channels_last if nd == 4 else torch.channels_last_3d
        base = torch.empty(shape, memory_format=fmt, **opts)
        view = base
    base.fill_(fill)
    with torch.no_grad():
        view.copy_(values.to(device))
    assert tuple(view.shape) == shape
    return view, kind


def expand_to(view, shape):
    return view.expand(shape) if tuple(view.shape) != tuple(shape) else view


def one_hot_rows(index, shape):
    return torch.zeros(shape, dtype=torch.bool).scatter_(-1, index, True)


def row_mask(gen, shape):
    """-inf positions: some entries of a row; for some rows all entries but one; never a whole row."""
    V = shape[-1]
    if V == 1 or prod(shape) == 0:
        return torch.zeros(shape, dtype=torch.bool)
    m = gen.rand(shape) < gen.r.uniform(0.05, 0.9)
    m = m | (gen.rand(shape[:-1] + (1,)) < gen.pick([0.0, 0.2, 1.0], [5, 4, 1]))
    keep = gen.randint(V, shape[:-1] + (1,))
    return m & ~(one_hot_rows(keep, shape) & m.all(-1, keepdim=True))


def superset_mask(gen, base, shape):
    """A mask containing ``base`` (expanded to ``shape``), never a whole row."""
    base = base.expand(shape)
    m = base | (gen.rand(shape) < gen.r.uniform(0.0, 0.8))
    keep = ((~base).to(F64) * (gen.rand(shape) + 0.5)).argmax(-1, keepdim=True)
    return m & ~(one_hot_rows(keep, shape) & m.all(-1, keepdim=True))


def choose_grads(gen, names, p_each):
    """The subset of ``names`` that requires grad (each with its probability)."""
    return [n for n, p in zip(names, p_each) if gen.chance(p)]


def maybe_nan(gen, case, values, who, p=0.03):
    """``values`` with one entry NaN, rarely (spec: a NaN in gives NaN out)."""
    if values.numel() and gen.chance(p):
        flat = values.reshape(-1).clone()
        flat[gen.int(0, flat.numel() - 1)] = math.nan
        case.notes.append(f"a NaN in {who}")
        case.has_nan = True
        return flat.reshape(values.shape)
    return values


def loss_dtype(*tensors):
    return F64 if any(t is not None and t.dtype == F64 for t in tensors) else F32


# ----------------------------------------------------------------------------- noise floors
# An output that cancels to (nearly) 0 - a KL between equal rows, the gradient of a softmax whose
# grad_output is all ones, attention maps of one pixel - cannot be checked relative to itself:
# the op's rounding noise is relative to the terms it is formed of. Each family gives a first-
# order bound of that noise, eps * M (eps = NOISE_K * u, u = 2^-24, or 2^-53 for float64
# outputs), M the magnitude of the terms (plus eps^2 * M2 where a square of a cancelled
# difference is formed); a check passes when the absolute error is within it or the relative
# error within its bound.

def fin(x):
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def tnorm(x):
    return float(fin(torch.as_tensor(x, dtype=F64)).norm())


def row_coefficients(w, reduction, R, V):
    """|d output / d row loss| per row (broadcastable to the rows) and the forward's factor."""
    f = {"none": 1.0, "sum": 1.0, "mean": 1.0 / max(R * V, 1), "batchmean": 1.0 / max(R, 1)}[reduction]
    if w is None:
        return None, f
    return (w.abs() if reduction == "none" else w.abs() * f), f


def softmax_terms(x, T, exact_reference=False):
    """softmax(x / T) and the magnitude 1 + |x / T - max| + (logsumexp - max) of the exponent
    its entries are formed from (rounding in the exponent is relative error in the entry). An
    op that divides before subtracting the max also rounds x / T, as the composite does: where
    that composite runs in lower precision its error (3 * err_composite) allows for it; for a
    float64 output it is the reference itself, so ``exact_reference`` adds |max| here."""
    z = x / T
    m = fin(z.amax(-1, keepdim=True)) if z.shape[-1] else torch.zeros_like(z[..., :1])
    z = z - m
    lse = torch.logsumexp(z, -1, keepdim=True)
    a = 1.0 + fin(z).abs() + fin(lse).abs() + (m.abs() if exact_reference else 0.0)
    return torch.softmax(z, -1), a


def soft_magnitudes(s, t, T, exact_reference=False):
    """Per entry: the magnitude of a row loss's terms ((p + q) times the exponents' magnitudes)
    and of its gradient's entries (those plus (p + q) times the row's, for the row sums the
    gradients hold, e.g. the loss itself in KL's teacher gradient; divided by T)."""
    q, a_s = softmax_terms(s, T, exact_reference)
    p, a_t = softmax_terms(t, T, exact_reference)
    mag = fin((p + q) * (a_s + a_t))
    return mag, fin(mag + (p + q) * mag.sum(-1, keepdim=True)) / T


def reduce_magnitude(rows, reduction, f):
    return tnorm(rows) if reduction == "none" else f * float(fin(rows).sum())


# ----------------------------------------------------------------------------- cases

class Case:
    """One random op call: the op's tensors and arguments, how to call it, the composite it must
    equal, the noise floors of its outputs, and what to print when it fails."""

    def __init__(self, family, index, device, seed):
        self.family, self.index, self.device, self.seed = family, index, device, seed
        self.gen = Gen(seed, index)
        self.op_name = family
        self.args = {}          # non-tensor arguments, as passed
        self.tensors = {}       # name -> tensor (or None), the op's tensor arguments
        self.layouts = {}
        self.grad = []          # names of the tensors that require grad
        self.notes = []
        self.has_nan = False    # a NaN was put into an input
        self.out_dtype = None
        self.keywords = self.gen.chance(0.5)  # call fusedkd.<op>(..., name=value) rather than torch.ops
        self.composite = None   # (**tensors) -> output (any dtype)
        self.noise = None       # (float64 tensors, float64 grad_output, eps) -> {"forward"|name: noise floor}

    def call(self, **tensors):
        """The op on ``tensors`` (the op's tensor arguments, in schema order) and ``self.args``."""
        if self.keywords:
            return getattr(fusedkd, self.op_name)(*tensors.values(), **self.args)
        return getattr(ops, self.op_name)(*tensors.values(), *self.args.values())

    def add(self, name, tensor, layout):
        self.tensors[name] = tensor
        self.layouts[name] = layout

    def describe(self):
        lines = [f"case {self.index} (FUSEDKD_RANDOM_SEED={self.seed}) on {self.device}: "
                 f"{self.op_name}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"]
        for name, t in self.tensors.items():
            if t is None:
                lines.append(f"  {name}: None")
                continue
            lines.append(
                f"  {name}: {str(t.dtype).replace('torch.', '')} shape={tuple(t.shape)} "
                f"stride={t.stride()} offset={t.storage_offset()} layout={self.layouts[name]}"
                f"{' requires_grad' if name in self.grad else ''}")
        if self.keywords:
            lines.append("  note: called as fusedkd.<op> with keyword arguments")
        for n in self.notes:
            lines.append(f"  note: {n}")
        lines.append(f"  replay: FUSEDKD_RANDOM_SEED={self.seed} FUSEDKD_RANDOM_CASE={self.index} "
                     f"python -m pytest -q python/tests/test_randomized.py -k {self.family}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- checking

def compared(x, ref, nan_lenient=False):
    """(||x - ref||, ||ref||) over the entries where ``ref`` rounded to x's dtype is finite, or
    None when the non-finite entries differ (NaN for NaN and inf for inf are equal; an overflow
    to inf when a low-precision output is rounded is the right answer). ``nan_lenient`` (the
    gradients of a NaN input, see test_randomized's docstring): an entry whose reference is NaN
    may hold anything, but a non-finite entry where the reference is finite still fails."""
    if x is None or tuple(x.shape) != tuple(ref.shape):
        return None
    xd = x.detach().to("cpu", F64)
    r = ref.detach().to("cpu", F64)
    rr = r.to(x.dtype).to(F64) if x.dtype != F64 else r
    skip = torch.isnan(rr) if nan_lenient else torch.zeros_like(rr, dtype=torch.bool)
    if x.dtype in (F16, BF16):  # at the overflow threshold: the largest finite value or inf, as rounding goes
        big = torch.finfo(x.dtype).max
        skip |= ((xd.abs() == big) | torch.isinf(xd)) & (r.abs() >= big * (1 - TOL[x.dtype])) & (xd * r > 0)
    bad = (~torch.isfinite(xd) | ~torch.isfinite(rr)) & ~skip
    a, b = xd[bad], rr[bad]
    if not bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all()):
        return None
    keep = ~bad & ~skip
    return float((xd[keep] - r[keep]).norm()), float(r[keep].norm())


def grad_output_for(gen, out):
    """The upstream gradient: for a scalar 1, a random factor, a loss scale or 0; else random
    values (sometimes all ones, sometimes times a loss scale) in the output's dtype and a random
    layout."""
    if out.dim() == 0:
        kind = gen.pick(["one", "factor", "loss scale", "zero"], [5, 4, 2, 1])
        value = {"one": 1.0, "factor": gen.r.uniform(-3.0, 3.0), "loss scale": 2.0 ** gen.int(8, 16), "zero": 0.0}[kind]
        return torch.full_like(out, value), f"grad_output {value:g}"
    values = torch.ones(out.shape, dtype=F64) if gen.chance(0.1) else gen.randn(out.shape)
    note = ""
    if gen.chance(0.15):  # a loss scale (GradScaler); float16 grad_outputs stay finite
        scale = 2.0 ** gen.int(4, 12 if out.dtype == F16 else 16)
        values, note = values * scale, f" x {scale:g}"
    w, layout = place(gen, values, out.dtype, out.device)
    return w, f"grad_output random{note}, layout={layout}"


def with_grad(tensors, names, dtype=None):
    out = {}
    for k, v in tensors.items():
        if v is not None and v.is_floating_point():
            v = v.detach()
            if dtype is not None:
                v = v.to(dtype)
            v = v.requires_grad_(k in names)
        out[k] = v
    return out


def compare(what, out, ref, low, floor, problems, summary, nan_lenient=False):
    """Passes when ||out - ref|| <= max(bound * ||ref||, floor), bound = max(tol, 3 * err of the
    composite in the inputs' own precision) (tol alone when that composite is non-finite where
    the float64 one is not), floor = the rounding-noise floor of the computation (NOISE_K)."""
    got = compared(out, ref, nan_lenient)
    low_got = compared(low, ref, nan_lenient) if low is not None else None
    err_c = INF if low_got is None else low_got[0] / max(low_got[1], 1e-300)
    tol = TOL[out.dtype]
    bound = tol if not math.isfinite(err_c) else max(tol, 3.0 * err_c)
    if out.dtype == F16:  # float16 subnormals: an absolute spacing of 2^-24
        floor += 2.0 ** -24 * math.sqrt(max(out.numel(), 1))
    if got is None:
        summary.append(f"{what}: non-finite entries differ")
        problems.append(f"{what}: non-finite entries differ from the float64 composite's; "
                        f"ours {sample(out)} vs float64 {sample(ref)}")
        return
    diff, norm = got
    norm = max(norm, 1e-300)
    err = diff / norm
    summary.append(f"{what}: rel err {err:.3g} (bound {bound:.3g}, composite in own precision {err_c:.3g}), "
                   f"abs err {diff:.3g} (noise floor {floor:.3g})")
    if not diff <= max(bound * norm, floor):
        problems.append(f"{what}: rel err {err:.3g} > bound {bound:.3g} (tol {tol:g}, composite in own "
                        f"precision {err_c:.3g}) and abs err {diff:.3g} > noise floor {floor:.3g}; "
                        f"ours {sample(out)} vs float64 {sample(ref)}")


def sample(t):
    t = t.detach().to("cpu", F64).reshape(-1)
    if t.numel() <= 6:
        return [float(f"{v:.8g}") for v in t.tolist()]
    return f"[{t.numel()} values, first {[float(f'{v:.8g}') for v in t[:4].tolist()]}]"


def run_case(case):
    """Runs the op once, then checks it against its composite (``verify``). Returns (problems,
    summary lines)."""
    summary = []
    ins = with_grad(case.tensors, case.grad)
    with torch.set_grad_enabled(bool(case.grad)):
        out = case.call(**ins)
    w = grads = None
    if case.grad:
        w, note = grad_output_for(case.gen, out)
        summary.append(note)
        grads = torch.autograd.grad(out, [ins[k] for k in case.grad], w)
    return verify(case, out, w, grads, summary), summary


def verify(case, out, w, grads, summary):
    """Checks the op's output and gradients against the case's composite (float64; and in the
    inputs' own precision for the bound)."""
    problems, names = [], case.grad
    ref_ins = with_grad(case.tensors, names, F64)
    ref = case.composite(**ref_ins)
    low_ins = with_grad(case.tensors, names)
    try:
        low = case.composite(**low_ins)
    except RuntimeError as e:  # a composite torch cannot run in that dtype: no err_composite
        low = None
        summary.append(f"composite in own precision failed: {str(e).splitlines()[0][:100]}")
    if out.dtype != case.out_dtype:
        problems.append(f"output dtype {out.dtype}, expected {case.out_dtype}")
    if tuple(out.shape) != tuple(ref.shape):
        problems.append(f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
        return problems
    eps = NOISE_K * (UNIT[F64] if out.dtype == F64 else UNIT[F32])
    with torch.no_grad():
        plain = {k: (v.detach().to(F64) if v is not None and v.is_floating_point() else v)
                 for k, v in case.tensors.items()}
        floors = case.noise(plain, None if w is None else w.detach().to(F64), eps)
    compare("forward", out, ref, low, floors["forward"], problems, summary)
    if not names:
        return problems
    w64 = w.detach().to(F64)
    ref_grads = torch.autograd.grad(ref, [ref_ins[k] for k in names], w64, allow_unused=True,
                                    materialize_grads=True)
    low_grads = [None] * len(names)
    if low is not None and low.requires_grad:
        low_grads = torch.autograd.grad(low, [low_ins[k] for k in names], w.to(low.dtype), allow_unused=True,
                                        materialize_grads=True)
    for k, g, r, lg in zip(names, grads, ref_grads, low_grads):
        if g.dtype != case.tensors[k].dtype or tuple(g.shape) != tuple(case.tensors[k].shape):
            problems.append(f"grad {k}: dtype {g.dtype} shape {tuple(g.shape)}, expected those of the input")
            continue
        compare(f"grad {k}", g, r, lg, floors[k], problems, summary, nan_lenient=case.has_nan)
    return problems

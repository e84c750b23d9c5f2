"""Randomized differential tests: every fusedkd op against its float64 composite.

A seeded generator builds op calls (``../shared/spec/ops.md``): random leading dims (0 rows and
V = 1 among them), V mostly 1..300 and rarely thousands up to ~100k, every dtype (float32,
float64, float16, bfloat16) and mixed student/teacher pairs, temperatures log-uniform in
[0.05, 100] (and exactly 1), -inf masks (some entries of a row; all of a row but one column;
never a whole row), huge finite logits (+-1e4; +-60000 in float16), rare NaNs, and any strides
(transposed and permuted views, slices with a step, a narrowed last dim of a wider tensor, a
storage offset, channels-last maps, an expanded teacher). Every container is filled with NaN
(labels: an out-of-range id) before the view is written, so a read outside the view shows.
The op is called through torch.ops.fusedkd or, for half the cases, fusedkd.<op> with keywords.

Each case runs the op's forward (under no_grad when no input requires grad) and its backward for
the inputs that require grad, with a grad_output of 1, 0, a random factor, a loss scale (2^4 to
2^16, as GradScaler's) or random non-contiguous values, and compares every output with the
composite evaluated on the same values upcast to float64 (gradients by autograd through it):
  diff = ||out - ref|| over the entries where ref, rounded to out's dtype, is finite; the other
         entries must be equal (NaN to NaN, inf to inf: a float16 overflow to inf is the right
         rounding; at the float16/bfloat16 overflow threshold either of max and inf passes).
  pass   when diff <= max(bound * ||ref||, floor)
  bound  = max(tol(out dtype), 3 * err_composite): err_composite = ||low - ref|| / ||ref|| for
         the same composite evaluated in the inputs' own precision (what a user would write, a
         mixed pair promoted by torch); tol alone when that one is non-finite where ref is not.
  floor  = NOISE_K (4) * u * M: the first-order rounding noise of the computation, u = 2^-24
         (2^-53 for float64 outputs), M the magnitude of the terms the output is formed of (per
         family, in randomized_soft/_feature's noise(): e.g. sum_j (p_j + q_j)(a_s,j + a_t,j)
         for a KL row, a_j = 1 + |x_j/T - max| + (lse - max); the generalized JSD's student and
         teacher gradients carry 1 - beta and beta). An output that cancels to ~0 (a KL of equal
         rows, a softmax gradient for an all-ones grad_output, an attention map of one pixel) can
         only be checked this way; elsewhere the bound rules.
         (Measured over 20000 cases: with NOISE_K = 1 one case fails, with 0.25 ~150; 4 is the
         margin.)
``tol`` (by the dtype of the output: the loss is float32 for half inputs, a gradient has its
input's dtype); docs' convention: float32 well under 1e-5, half inputs under 1e-2:
  float64  1e-10  the ops accumulate in float64.
  float32  1e-5   ~170 unit roundoffs: exp/log and accumulation over up to ~1e5 terms.
  float16  4e-3   8 unit roundoffs (u = 2^-11)  } only the final rounding of a result computed
  bfloat16 1e-2   2.6 unit roundoffs (u = 2^-8) } in float32 may show (spec: float32 math).
NaN inputs: the forward must be NaN exactly where the composite is; a gradient entry whose
composite value is NaN may hold anything (the ops' 0 for a p_j = 0 term, from the spec's
0 * -inf = 0 rule, against autograd's 0 * NaN), but a NaN where the composite is finite fails.

Knobs (environment):
  FUSEDKD_RANDOM_SEED     the seed (default 20240531); case i draws from (seed, i) only.
  FUSEDKD_RANDOM_CASES    the number of cases (default 40000: ~55 s on one core of a 2-core machine).
  FUSEDKD_RANDOM_CASE     run only case <index> (its family's test; the others skip).
  FUSEDKD_RANDOM_VERBOSE  print every case's description and errors (use with ``pytest -s``).
  FUSEDKD_RANDOM_THREADS  torch's intra-op threads while the cases run (default 1: on a loaded
                          machine OpenMP threads of tiny ops wait on each other, ~30x slower;
                          2 or more also runs the CPU kernels' row split over several tasks).
Case i is of family SCHEDULE[i % len(SCHEDULE)]; there is one pytest test per op family (and
device), which runs its share and reports every failing case with its description (op,
arguments, shapes, strides, offsets, dtypes, layouts, seed and index) and the command that
replays it. The generators live in randomized_soft.py and randomized_feature.py, the checking
in randomized_check.py.

The bugs these cases found are kept, shrunk, as the named regression tests at the end.
"""
from __future__ import annotations

import math
import os
import time

import pytest
import torch
import torch.nn.functional as F

import fusedkd  # noqa: F401  (loads the op library)
from randomized_check import F16, TOL, Case, run_case
from randomized_feature import (make_attention_transfer, make_feature_mse, make_projected_feature_mse,
                                make_similarity_preserving)
from randomized_soft import jsd_rows, make_kd_loss, make_pair_loss, make_softmax

ops = torch.ops.fusedkd
HAVE_CUDA = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "fusedkd::_soft_target_forward", "CUDA"
)
DEVICES = ["cpu"] + (["cuda"] if HAVE_CUDA else [])

SEED = int(os.environ.get("FUSEDKD_RANDOM_SEED", "20240531"))
CASES = int(os.environ.get("FUSEDKD_RANDOM_CASES", "40000"))
ONLY = os.environ.get("FUSEDKD_RANDOM_CASE")
ONLY = int(ONLY) if ONLY not in (None, "") else None
VERBOSE = os.environ.get("FUSEDKD_RANDOM_VERBOSE", "") not in ("", "0")
THREADS = int(os.environ.get("FUSEDKD_RANDOM_THREADS", "1"))

# Case i is of family SCHEDULE[i % len(SCHEDULE)] (kd_loss, the op with most options, twice).
SCHEDULE = [
    "softmax_t", "log_softmax_t", "kl_div", "jsd", "soft_mse", "kd_loss", "kd_loss",
    "feature_mse", "attention_transfer", "similarity_preserving", "projected_feature_mse",
]
FAMILIES = sorted(set(SCHEDULE))
MAKERS = {
    "softmax_t": lambda c: make_softmax(c, log=False),
    "log_softmax_t": lambda c: make_softmax(c, log=True),
    "kl_div": make_pair_loss,
    "jsd": make_pair_loss,
    "soft_mse": make_pair_loss,
    "kd_loss": make_kd_loss,
    "feature_mse": make_feature_mse,
    "attention_transfer": make_attention_transfer,
    "similarity_preserving": make_similarity_preserving,
    "projected_feature_mse": make_projected_feature_mse,
}


def make_case(index, device, seed=SEED):
    case = Case(SCHEDULE[index % len(SCHEDULE)], index, device, seed)
    MAKERS[case.family](case)
    return case


def case_indices(family):
    if ONLY is not None:
        return [ONLY] if SCHEDULE[ONLY % len(SCHEDULE)] == family else []
    return [i for i in range(CASES) if SCHEDULE[i % len(SCHEDULE)] == family]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", FAMILIES)
def test_randomized(family, device):
    indices = case_indices(family)
    if not indices:
        pytest.skip(f"no {family} case selected (FUSEDKD_RANDOM_CASE={ONLY})")
    failures = []
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        for i in indices:
            case = None
            try:
                case = make_case(i, device)
                problems, summary = run_case(case)
            except Exception as e:  # noqa: BLE001  (an op that raises is a failing case, with its description)
                problems, summary = [f"raised {type(e).__name__}: {str(e).strip()[:400]}"], []
            text = case.describe() if case is not None else f"case {i} (FUSEDKD_RANDOM_SEED={SEED}): not generated"
            if VERBOSE:
                print(text + "".join(f"\n  {s}" for s in summary) + "".join(f"\n  FAIL {p}" for p in problems))
            if problems:
                failures.append(text + "".join(f"\n  FAIL {p}" for p in problems))
    finally:
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - start
    if failures:
        shown = "\n\n".join(failures[:6])
        pytest.fail(f"{len(failures)} of {len(indices)} {family} cases failed on {device} "
                    f"(seed {SEED}, {elapsed:.1f} s); the first {min(6, len(failures))}:\n\n{shown}",
                    pytrace=False)


# ----------------------------------------------------------------------------- named regressions
# Bugs found by the cases above (or beside them), shrunk; each test failed before its fix.


def _fp16_case(op):
    """Float16 inputs whose gradient, for grad_output 1, lies in float16's subnormal range (below
    6.1e-5): rounded there, it kept a few bits or none."""
    g = torch.Generator().manual_seed(0)
    if op in ("kl_div", "jsd", "soft_mse", "kd_loss"):
        s, t = torch.zeros(1, 2), torch.tensor([[0.0, 1e-3]])
        fn = {"kl_div": lambda a, b: ops.kl_div(a, b, 100.0, "sum"),
              "jsd": lambda a, b: ops.jsd(a, b, 100.0, 0.5, "sum"),
              "soft_mse": lambda a, b: ops.soft_mse(a, b, 100.0, "sum"),
              "kd_loss": lambda a, b: ops.kd_loss(a, b, None, 100.0)}[op]
    elif op == "feature_mse":
        s, t = torch.full((8, 64, 16, 16), 0.01), torch.zeros(8, 64, 16, 16)
        fn = ops.feature_mse
    elif op == "attention_transfer":
        s, t = torch.ones(2, 1, 64, 64), torch.ones(2, 1, 64, 64)
        s[..., :32] = 2.0
        fn = lambda a, b: ops.attention_transfer(a, b, 2.0, "mean")  # noqa: E731
    elif op == "similarity_preserving":
        s = torch.randn(4, 8, 16, 16, generator=g) * 0.1
        t = s + 1e-3 * torch.randn(4, 8, 16, 16, generator=g)
        fn = ops.similarity_preserving
    else:  # projected_feature_mse's teacher gradient (formed in the forward): the input here is the teacher
        s, t = torch.zeros(8, 64, 16, 16), torch.full((8, 64, 16, 16), 0.01)
        fn = lambda a, b: ops.projected_feature_mse(b, torch.eye(64, dtype=a.dtype), None, a)  # noqa: E731
    return s.half(), t.half(), fn


@pytest.mark.parametrize("op", ["kl_div", "jsd", "soft_mse", "kd_loss", "feature_mse", "attention_transfer",
                                "similarity_preserving", "projected_feature_mse"])
def test_regression_fp16_gradient_rounded_after_grad_output_scaling(op):
    # The loss ops form their gradients in the forward, for grad_output 1, and the backward scales
    # them. For float16 inputs they were rounded to float16 before that scaling: under GradScaler's
    # 65536 a small gradient was lost to underflow (float16 subnormals). A float16 gradient must be
    # the float32 computation's, times grad_output, rounded once: compared with the same op on the
    # inputs upcast to float32 (the float32 path is checked against float64 by the cases above).
    s, t, fn = _fp16_case(op)
    scale = 65536.0  # GradScaler's default initial scale
    s16 = s.requires_grad_()
    g, = torch.autograd.grad(fn(s16, t) * scale, [s16])
    s32 = s.detach().float().requires_grad_()
    ref, = torch.autograd.grad(fn(s32, t.float()) * scale, [s32])
    assert g.dtype == F16
    err = ((g.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < TOL[F16], f"relative error {err:.3g} of the float16 gradient (the scaled one is representable)"


def test_regression_fp16_gradient_overflows_before_grad_output_scaling():
    # Reverse KL at T = 0.05: d l / d s = -+1e5 for grad_output 1 (inf in float16); with 0.5 it is
    # -+5e4, which float16 holds.
    s = torch.zeros(1, 2, dtype=F16, requires_grad=True)
    t = torch.tensor([[0.0, -1000.0]], dtype=F16)
    g, = torch.autograd.grad(ops.kl_div(s, t, 0.05, "sum", True), [s], torch.tensor(0.5))
    ref = torch.tensor([[-50000.0, 50000.0]], dtype=torch.float64)
    assert torch.isfinite(g).all() and ((g.double() - ref).norm() / ref.norm()).item() < TOL[F16], g


@pytest.mark.parametrize("op", ["jsd", "kd_loss"])
def test_regression_jsd_one_minus_beta_formed_in_float32(op):
    # jsd and kd_loss(divergence="jsd") rounded beta to float32 and formed 1 - beta in float32: the
    # weight 1 - beta was off by up to 2^-24 / (1 - beta) relative, at beta = 0.99999 a student
    # gradient 1.36e-3 off (the float32 composite: 5e-7). Now formed in double (fusedkd::Mixture).
    beta = 0.99999
    s, t = torch.zeros(1, 2, requires_grad=True), torch.tensor([[0.0, 1.0]])
    loss = ops.jsd(s, t, 1.0, beta, "sum") if op == "jsd" else ops.kd_loss(s, t, None, 1.0, divergence="jsd", beta=beta)
    g, = torch.autograd.grad(loss, [s])
    s64 = s.detach().double().requires_grad_()
    ref, = torch.autograd.grad(jsd_rows(F.log_softmax(s64, -1), F.log_softmax(t.double(), -1), beta).sum(), [s64])
    err = ((g.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[torch.float32], f"relative error {err:.3g} of the student gradient"


@pytest.mark.parametrize("op,reduction", [("kl_div", "mean"), ("kl_div", "batchmean"), ("jsd", "mean"),
                                          ("jsd", "batchmean"), ("soft_mse", "mean"), ("soft_mse", "batchmean"),
                                          ("similarity_preserving", None)])
def test_regression_empty_batch_mean_is_nan(op, reduction):
    # The spec's "mean" (sum / (R * V)) and "batchmean" (sum / R), and similarity_preserving's / N^2,
    # are 0 / 0 = NaN for an empty batch, as torch's composites (kd_loss's n = 0 is 0: the spec's
    # own rule); these ops returned 0. The gradients stay empty, and "sum" stays 0.
    s = torch.zeros(0, 5, requires_grad=True)
    t = torch.zeros(0, 5)
    call = {"kl_div": lambda r: ops.kl_div(s, t, 1.0, r), "jsd": lambda r: ops.jsd(s, t, 1.0, 0.5, r),
            "soft_mse": lambda r: ops.soft_mse(s, t, 1.0, r),
            "similarity_preserving": lambda r: ops.similarity_preserving(s, t)}[op]
    out = call(reduction)
    assert torch.isnan(out), out
    g, = torch.autograd.grad(out, [s])
    assert g.shape == s.shape
    if reduction is not None:
        assert call("sum").item() == 0.0
    assert ops.kd_loss(s, t, None, 1.0).item() == 0.0


def test_empty_batch_mean_of_feature_ops_is_nan():
    s, t = torch.zeros(0, 3, 4, 4), torch.zeros(0, 2, 4, 4)
    assert torch.isnan(ops.feature_mse(s, s, "mean"))
    assert torch.isnan(ops.attention_transfer(s, t, 2.0, "mean"))
    assert torch.isnan(ops.attention_transfer(s, t, 2.0, "batchmean"))
    assert torch.isnan(ops.projected_feature_mse(s, torch.ones(2, 3), None, t, "mean"))


def test_regression_feature_mse_rejects_0_dim():
    # The spec's errors (all ops) include "fewer than 1 dim"; feature_mse accepted two 0-dim tensors.
    with pytest.raises(RuntimeError, match="student must have at least 1 dims"):
        ops.feature_mse(torch.tensor(1.5), torch.tensor(0.5))
    with pytest.raises(RuntimeError, match="teacher must have at least 1 dims"):
        ops.feature_mse(torch.ones(1), torch.tensor(0.5))


@pytest.mark.parametrize("op", ["softmax_t", "log_softmax_t", "kl_div", "kl_div_reverse", "jsd", "soft_mse"])
def test_fully_masked_row_is_nan_and_stays_in_its_row(op):
    # The cases never mask a whole row: the spec has no rule for one beyond "IEEE arithmetic" and
    # the torch composite, whose softmax of an all -inf row is NaN. That row is NaN, in the loss
    # and its gradients; the other rows are what they are alone.
    call = {"softmax_t": lambda s, t: ops.softmax_t(s, 2.0),
            "log_softmax_t": lambda s, t: ops.log_softmax_t(s, 2.0),
            "kl_div": lambda s, t: ops.kl_div(s, t, 2.0, "none"),
            "kl_div_reverse": lambda s, t: ops.kl_div(s, t, 2.0, "none", True),
            "jsd": lambda s, t: ops.jsd(s, t, 2.0, 0.3, "none"),
            "soft_mse": lambda s, t: ops.soft_mse(s, t, 2.0, "none")}[op]
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
    s[1], t[1] = -math.inf, -math.inf
    outs, grads = [], []
    for rows in (slice(None), [0], [2]):
        a, b = s[rows].clone().requires_grad_(), t[rows].clone().requires_grad_()
        out = call(a, b)
        outs.append(out)
        grads.append(torch.autograd.grad(out.sum(), (a, b), allow_unused=True, materialize_grads=True))
    full, row0, row2 = outs
    assert torch.isnan(full[1]).all()
    torch.testing.assert_close(full[[0, 2]], torch.cat([row0, row2]), rtol=1e-12, atol=0)
    for k in range(2):
        assert torch.isnan(grads[0][k][1]).all() or op in ("softmax_t", "log_softmax_t") and k == 1
        torch.testing.assert_close(grads[0][k][[0, 2]], torch.cat([grads[1][k], grads[2][k]]), rtol=1e-12, atol=0)

"""Bad input from every entry point (issue 14; ../shared/spec/ops.md, "Errors").

Every error the spec lists, for every public op, through torch.ops.fusedkd (positional, as the
schema), the functional API (keywords) and the fusedkd.nn module (options to the constructor,
tensors to forward; softmax_t and log_softmax_t have no module), on each device:
  - raises an error (RuntimeError; ValueError is also accepted from the Python layers) whose
    message names the op and the offending argument;
  - leaves nothing half-written: the valid inputs (all floating ones require grad) keep their
    values bit for bit, their _version and .grad None; the previous good call's loss and
    gradients are untouched; on CUDA no device memory is left allocated; the next good call gives
    bit-identical loss and gradients to the good call made before the bad one.
Each case runs with grad enabled and under torch.no_grad().

The table (BAD) holds one row per (op, error): the arguments that replace the op's valid ones
(OPS) and the argument names the message must contain. Out-of-range label values are an error
on CPU only; on CUDA the spec makes the loss NaN instead (checked as such).
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch

import fusedkd
import fusedkd.nn as knn

ops = torch.ops.fusedkd
HAVE_CUDA = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "fusedkd::_soft_target_forward", "CUDA"
)
DEVICES = ["cpu"] + (["cuda"] if HAVE_CUDA else [])


# ------------------------------------------------------------------ the ops and their valid calls

_seeds = itertools.count(1)


def rand(*shape):
    seed = next(_seeds)
    return lambda device: torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


def ints(*values):
    return lambda device: torch.tensor(values, dtype=torch.int64, device=device)


def zeros(*shape, dtype=torch.float32, device=None):
    """A bad tensor: on the test's device, or always on ``device`` when given."""
    return lambda test_device: torch.zeros(shape, dtype=dtype, device=device or test_device)


def modular(cls, *tensor_names):
    """Calls ``cls(**options)(*tensors)``: the options are the arguments not in tensor_names."""
    def call(args):
        options = {k: v for k, v in args.items() if k not in tensor_names}
        return cls(**options)(*(args[k] for k in tensor_names))
    return call


def fitnet(args):
    """FitNetHint owns weight and bias as parameters: the test's own tensors (bad ones too) are put
    in their place, so the module's forward gets exactly what the other entry points get."""
    hint = knn.FitNetHint(1, 1, bias=True, reduction=args["reduction"])
    hint._parameters.update(weight=args["weight"], bias=args["bias"])
    return hint(args["student"], args["teacher"])


@dataclass
class Op:
    valid: dict  # the schema's arguments in order; callables make tensors on the device
    module: Optional[Callable] = None


SOFTMAX_OPS = ("softmax_t", "log_softmax_t")
PAIR_OPS = ("kl_div", "jsd", "soft_mse", "kd_loss")
FEATURE_OPS = ("feature_mse", "attention_transfer", "projected_feature_mse", "similarity_preserving")
LOGITS = dict(student_logits=rand(4, 5), teacher_logits=rand(4, 5))
MAPS = dict(student=rand(2, 3, 4, 4), teacher=rand(2, 5, 4, 4))
OPS = {
    "softmax_t": Op(dict(logits=rand(4, 5), temperature=2.0)),
    "log_softmax_t": Op(dict(logits=rand(4, 5), temperature=2.0)),
    "kl_div": Op(dict(**LOGITS, temperature=2.0, reduction="batchmean", reverse=False),
                 modular(knn.KLDivLoss, "student_logits", "teacher_logits")),
    "jsd": Op(dict(**LOGITS, temperature=2.0, beta=0.3, reduction="sum"),
              modular(knn.JSDLoss, "student_logits", "teacher_logits")),
    "soft_mse": Op(dict(**LOGITS, temperature=2.0, reduction="mean"),
                   modular(knn.SoftMSELoss, "student_logits", "teacher_logits")),
    "kd_loss": Op(dict(**LOGITS, labels=ints(0, 3, -100, 4), temperature=2.0, soft_weight=0.7, hard_weight=0.3,
                       divergence="kl", beta=0.5, ignore_index=-100, t2_scale=True),
                  modular(knn.KDLoss, "student_logits", "teacher_logits", "labels")),
    "feature_mse": Op(dict(student=rand(2, 3, 4, 4), teacher=rand(2, 3, 4, 4), reduction="mean"),
                      modular(knn.FeatureMSELoss, "student", "teacher")),
    "attention_transfer": Op(dict(**MAPS, p=2.0, reduction="mean"),
                             modular(knn.AttentionTransferLoss, "student", "teacher")),
    "projected_feature_mse": Op(dict(student=MAPS["student"], weight=rand(5, 3), bias=rand(5),
                                     teacher=MAPS["teacher"], reduction="mean"), fitnet),
    "similarity_preserving": Op(dict(**MAPS), modular(knn.SimilarityPreservingLoss, "student", "teacher")),
}


# ------------------------------------------------------------------ the bad calls

@dataclass
class Bad:
    op: str
    error: str
    names: tuple  # what the message must contain besides the op's name
    replace: dict
    devices: tuple = ("cpu", "cuda")
    nan_on_cuda: bool = False  # the spec's CPU-only error: a NaN loss on CUDA
    entry_points: tuple = field(init=False)

    def __post_init__(self):
        self.entry_points = ("ops", "functional") + (("module",) if OPS[self.op].module else ())


def dtype_errors(op, names):
    return [Bad(op, f"{name}-{dt}", (name,), {name: zeros(*shape, dtype=getattr(torch, dt))})
            for name, shape in names.items() for dt in ("int32", "bool")]


def temperature_errors(op):
    return [Bad(op, f"temperature={T}", ("temperature",), dict(temperature=T)) for T in (0.0, -1.0, math.nan, math.inf)]


def feature_errors(op):
    teacher = (2, 3, 4, 4) if op == "feature_mse" else (2, 5, 4, 4)
    return [
        Bad(op, "0-dim-student", ("student",), dict(student=zeros())),
        Bad(op, "0-dim-teacher", ("teacher",), dict(teacher=zeros())),
        *dtype_errors(op, dict(student=(2, 3, 4, 4), teacher=teacher)),
        Bad(op, "device", ("teacher", "device"), dict(teacher=zeros(*teacher, device="cpu")), devices=("cuda",)),
    ]


BAD = [
    *[b for op in SOFTMAX_OPS for b in [
        Bad(op, "0-dim", ("logits",), dict(logits=zeros())),
        Bad(op, "V=0", ("logits",), dict(logits=zeros(4, 0))),
        *dtype_errors(op, dict(logits=(4, 5))),
        *temperature_errors(op),
    ]],
    *[b for op in PAIR_OPS for b in [
        Bad(op, "shape", ("student_logits", "teacher_logits"), dict(teacher_logits=zeros(4, 6))),
        Bad(op, "rows", ("student_logits", "teacher_logits"), dict(teacher_logits=zeros(3, 5))),
        Bad(op, "0-dim-student", ("student_logits",), dict(student_logits=zeros())),
        Bad(op, "0-dim-teacher", ("teacher_logits",), dict(teacher_logits=zeros())),
        Bad(op, "V=0", ("student_logits",), dict(student_logits=zeros(4, 0), teacher_logits=zeros(4, 0))),
        *dtype_errors(op, dict(student_logits=(4, 5), teacher_logits=(4, 5))),
        *temperature_errors(op),
        Bad(op, "device", ("teacher_logits", "device"), dict(teacher_logits=zeros(4, 5, device="cpu")),
            devices=("cuda",)),
    ]],
    *[Bad(op, "reduction", ("reduction",), dict(reduction="average")) for op in ("kl_div", "jsd", "soft_mse")],
    *[Bad(op, f"beta={beta}", ("beta",), dict(beta=beta, divergence="jsd") if op == "kd_loss" else dict(beta=beta))
      for op in ("jsd", "kd_loss") for beta in (-0.1, 1.5, math.nan)],
    Bad("kd_loss", "divergence", ("divergence",), dict(divergence="hellinger")),
    Bad("kd_loss", "hard_weight-without-labels", ("hard_weight", "labels"), dict(labels=None)),
    Bad("kd_loss", "labels-float", ("labels",), dict(labels=zeros(4))),
    Bad("kd_loss", "labels-bool", ("labels",), dict(labels=zeros(4, dtype=torch.bool))),
    Bad("kd_loss", "labels-shape", ("labels",), dict(labels=ints(0, 1, 2))),
    Bad("kd_loss", "labels-shape-2d", ("labels",), dict(labels=zeros(4, 1, dtype=torch.int64))),
    Bad("kd_loss", "labels-device", ("labels", "device"), dict(labels=zeros(4, dtype=torch.int64, device="cpu")),
        devices=("cuda",)),
    Bad("kd_loss", "label-too-large", ("labels",), dict(labels=ints(0, -100, 5, 1)), nan_on_cuda=True),
    Bad("kd_loss", "label-negative", ("labels",), dict(labels=ints(0, -1, 2, 1)), nan_on_cuda=True),
    *[b for op in FEATURE_OPS for b in feature_errors(op)],
    *[Bad(op, "reduction", ("reduction",), dict(reduction="average")) for op in FEATURE_OPS[:3]],
    Bad("feature_mse", "shape", ("student", "teacher"), dict(teacher=zeros(2, 5, 4, 4))),
    Bad("feature_mse", "reduction-batchmean", ("reduction",), dict(reduction="batchmean")),
    Bad("attention_transfer", "batch", ("student", "teacher"), dict(teacher=zeros(1, 5, 4, 4))),
    Bad("attention_transfer", "spatial", ("student", "teacher"), dict(teacher=zeros(2, 5, 4, 3))),
    Bad("attention_transfer", "1-dim", ("student",), dict(student=zeros(3), teacher=zeros(3))),
    *[Bad("attention_transfer", f"p={p}", ("p",), dict(p=p)) for p in (0.0, -1.0, math.nan, math.inf)],
    *dtype_errors("projected_feature_mse", dict(weight=(5, 3), bias=(5,))),
    Bad("projected_feature_mse", "weight-C_s", ("weight",), dict(weight=zeros(5, 4))),
    Bad("projected_feature_mse", "weight-1-dim", ("weight",), dict(weight=zeros(5))),
    Bad("projected_feature_mse", "weight-not-1x1", ("weight",), dict(weight=zeros(5, 3, 2))),
    Bad("projected_feature_mse", "weight-C_t=0", ("weight",), dict(weight=zeros(0, 3), bias=None)),
    Bad("projected_feature_mse", "weight-vs-bias", ("bias",), dict(weight=zeros(6, 3))),
    Bad("projected_feature_mse", "bias-shape", ("bias",), dict(bias=zeros(4))),
    Bad("projected_feature_mse", "bias-2-dim", ("bias",), dict(bias=zeros(5, 1))),
    Bad("projected_feature_mse", "bias-0-dim", ("bias",), dict(bias=zeros())),
    Bad("projected_feature_mse", "teacher-channels", ("teacher",), dict(teacher=zeros(2, 4, 4, 4))),
    Bad("projected_feature_mse", "teacher-spatial", ("teacher",), dict(teacher=zeros(2, 5, 4, 3))),
    Bad("projected_feature_mse", "student-1-dim", ("student",), dict(student=zeros(3))),
    *[Bad("projected_feature_mse", f"{name}-device", (name, "device"), {name: zeros(*shape, device="cpu")},
          devices=("cuda",))
      for name, shape in (("weight", (5, 3)), ("bias", (5,)))],
    Bad("similarity_preserving", "batch", ("student", "teacher"), dict(teacher=zeros(1, 5, 4, 4))),
]


def cases():
    for device in DEVICES:
        for bad in BAD:
            if device not in bad.devices:
                continue
            for entry_point in bad.entry_points:
                for grad in ("grad", "no_grad"):
                    yield pytest.param(bad, entry_point, device, grad,
                                       id=f"{bad.op}-{bad.error}-{entry_point}-{device}-{grad}")


# ------------------------------------------------------------------ the tests

def call(op, entry_point, args):
    if entry_point == "ops":
        return getattr(ops, op)(*args.values())
    if entry_point == "functional":
        return getattr(fusedkd.functional, op)(**args)
    return OPS[op].module(args)


def make(values, device):
    """The arguments on the device; floating tensors are fresh leaves that require grad."""
    args = {k: v(device) if callable(v) else v for k, v in values.items()}
    return {k: v.requires_grad_() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in args.items()}


def good_call(op, entry_point, args, leaves):
    """The loss and, with grad enabled, the gradients of every leaf for a fixed grad_output."""
    loss = call(op, entry_point, args)
    if not torch.is_grad_enabled():
        return [loss]
    weights = torch.linspace(-1.0, 2.0, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    return [loss.detach(), *torch.autograd.grad(loss, leaves, weights)]


@pytest.mark.parametrize("bad,entry_point,device,grad", list(cases()))
def test_bad_call_names_the_argument_and_leaves_nothing_half_written(bad, entry_point, device, grad):
    op = bad.op
    args = make(OPS[op].valid, device)
    leaves = [v for v in args.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    bad_args = {**args, **{k: v(device) if callable(v) else v for k, v in bad.replace.items()}}
    with torch.set_grad_enabled(grad == "grad"):
        before = good_call(op, entry_point, args, leaves)
        kept = [(x, x.detach().clone(), x._version) for x in leaves + before]
        allocated = torch.cuda.memory_allocated() if device == "cuda" else 0

        if device == "cuda" and bad.nan_on_cuda:
            loss = call(op, entry_point, bad_args)  # the spec: no error (no host sync), a NaN loss
            torch.cuda.synchronize()
            assert torch.isnan(loss).all(), loss
            del loss
        else:
            error_types = RuntimeError if entry_point == "ops" else (RuntimeError, ValueError)
            with pytest.raises(error_types) as raised:
                call(op, entry_point, bad_args)  # the module is built in here: it may raise ValueError
            if device == "cuda":
                torch.cuda.synchronize()
                assert torch.cuda.memory_allocated() == allocated, "the failed call left device memory allocated"

        for x, value, version in kept:
            assert torch.equal(x, value) and x._version == version, "an input or a previous result was written"
        assert all(x.grad is None for x in leaves), "the failed call accumulated a gradient"
        after = good_call(op, entry_point, args, leaves)
        assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before)), \
            "the next good call differs from the one before the bad call"

    if not (device == "cuda" and bad.nan_on_cuda):
        message = str(raised.value)
        for name in (op, *bad.names):
            if not re.search(rf"\b{re.escape(name)}\b", message):
                pytest.fail(f"{name!r} not in the message: {message}")


def test_the_table_covers_every_public_op():
    assert set(OPS) == set(fusedkd.functional.__all__)
    for op, spec in OPS.items():
        assert getattr(fusedkd, op) is getattr(fusedkd.functional, op)
        errors = {b.error for b in BAD if b.op == op}
        floating = [k for k, v in spec.valid.items() if callable(v) and k != "labels"]
        expected = {f"{k}-{dt}" for k in floating for dt in ("int32", "bool")}
        expected |= {"0-dim"} if len(floating) == 1 else {"0-dim-student"}
        if "temperature" in spec.valid:
            expected |= {f"temperature={T}" for T in (0.0, -1.0, math.nan, math.inf)}
        expected |= {"reduction"} if "reduction" in spec.valid else set()
        expected |= {"V=0"} if op in SOFTMAX_OPS + PAIR_OPS else set()
        assert expected <= errors, (op, expected - errors)
        assert op in SOFTMAX_OPS or spec.module is not None

"""The functional API: every fusedkd op with the operator contract's keyword arguments and
defaults (``../shared/spec/ops.md``). Each is one ``torch.ops.fusedkd`` call, with autograd, on CPU
and CUDA tensors; the docstrings give the plain-PyTorch composite it equals and an example
(run as doctests by python/tests/test_examples.py, with ``s, t`` random ``[4, 10]`` logits, ``y``
labels, ``fs, ft`` ``[2, 3, 8, 8]`` / ``[2, 5, 8, 8]`` maps and ``F = torch.nn.functional``)."""
from __future__ import annotations

from typing import Optional

import torch

_ops = torch.ops.fusedkd

__all__ = [
    "softmax_t",
    "log_softmax_t",
    "kl_div",
    "jsd",
    "soft_mse",
    "kd_loss",
    "feature_mse",
    "attention_transfer",
    "projected_feature_mse",
    "similarity_preserving",
]


def softmax_t(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``torch.softmax(logits / temperature, dim=-1)``, in logits' dtype.

    >>> fusedkd.softmax_t(s, temperature=2.0).allclose(torch.softmax(s / 2.0, -1))
    True
    """
    return _ops.softmax_t(logits, temperature)


def log_softmax_t(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``torch.log_softmax(logits / temperature, dim=-1)``, in logits' dtype.

    >>> fusedkd.log_softmax_t(s, temperature=0.5).allclose(torch.log_softmax(s / 0.5, -1))
    True
    """
    return _ops.log_softmax_t(logits, temperature)


def kl_div(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    reverse: bool = False,
) -> torch.Tensor:
    """KL(teacher || student) between the temperature-softened distributions, one fused pass.

    Per row ``sum_j p_j (log p_j - log q_j)`` with ``p = softmax(t / T)``, ``q = softmax(s / T)``;
    ``reverse=True`` gives KL(student || teacher). Equals
    ``F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction=reduction,
    log_target=True)`` (``"batchmean"`` divides by the number of rows, ``"none"`` gives one value
    per row). The loss is float32, or float64 when an input is.

    >>> ref = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), reduction="batchmean", log_target=True)
    >>> fusedkd.kl_div(s, t, temperature=2.0).allclose(ref)
    True
    """
    return _ops.kl_div(student_logits, teacher_logits, temperature, reduction, reverse)


def jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 0.5,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence ``beta KL(p || m) + (1 - beta) KL(q || m)`` with
    ``m = beta p + (1 - beta) q`` (``beta = 0``: KL(p || q); ``beta = 1``: KL(q || p)), ``p`` the
    teacher's and ``q`` the student's softened distributions, ``log m`` formed in log space.

    >>> fusedkd.jsd(s, t, temperature=2.0, beta=0.0).allclose(fusedkd.kl_div(s, t, temperature=2.0))
    True
    """
    return _ops.jsd(student_logits, teacher_logits, temperature, beta, reduction)


def soft_mse(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """``F.mse_loss(softmax(s / T), softmax(t / T), reduction=reduction)`` (the seed's first
    example's soft term).

    >>> fusedkd.soft_mse(s, t, temperature=5.0).allclose(F.mse_loss(F.softmax(s / 5, -1), F.softmax(t / 5, -1)))
    True
    """
    return _ops.soft_mse(student_logits, teacher_logits, temperature, reduction)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    soft_weight: float = 1.0,
    hard_weight: float = 0.0,
    divergence: str = "kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    t2_scale: bool = False,
) -> torch.Tensor:
    """``hard_weight * CE(s, labels) + soft_weight * (T^2 if t2_scale) * D(s, t)`` in one pass.

    CE is ``F.cross_entropy(s, labels, ignore_index=ignore_index)`` at temperature 1; D is the
    divergence (``"kl"``, ``"reverse_kl"``, ``"jsd"`` with ``beta``, ``"mse"``) at temperature T,
    averaged over the rows with a label (all rows without ``labels``; ``"mse"`` also over the
    classes). With no valid row the loss and its gradients are 0. The seed's second example is
    ``kd_loss(s, t, y, temperature=10, soft_weight=alpha, hard_weight=1)``.

    >>> loss = fusedkd.kd_loss(s, t, y, temperature=2.0, soft_weight=0.9, hard_weight=0.1, t2_scale=True)
    >>> ref = 0.1 * F.cross_entropy(s, y) + 0.9 * 4.0 * fusedkd.kl_div(s, t, temperature=2.0)
    >>> loss.allclose(ref)
    True
    """
    return _ops.kd_loss(
        student_logits, teacher_logits, labels, temperature, soft_weight, hard_weight, divergence, beta,
        ignore_index, t2_scale,
    )


def feature_mse(student: torch.Tensor, teacher: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``F.mse_loss(student, teacher, reduction=reduction)`` with the gradient written in the same
    pass; channels-last maps are read as they lie.

    >>> fusedkd.feature_mse(fs, fs * 0.5).allclose(F.mse_loss(fs, fs * 0.5))
    True
    """
    return _ops.feature_mse(student, teacher, reduction)


def attention_transfer(
    student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0, reduction: str = "mean"
) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis): ``a(x) = F.normalize(x.abs().pow(p).mean(1)
    .flatten(1), dim=1)`` and ``(a(s) - a(t)).pow(2)`` reduced by ``reduction`` (``"mean"`` over
    N x spatial, ``"batchmean"``, ``"sum"``, ``"none"`` per sample); channel counts may differ.

    >>> def a(x): return F.normalize(x.abs().pow(2).mean(1).flatten(1), dim=1)
    >>> fusedkd.attention_transfer(fs, ft).allclose((a(fs) - a(ft)).pow(2).mean())
    True
    """
    return _ops.attention_transfer(student, teacher, p, reduction)


def projected_feature_mse(
    student: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    teacher: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """FitNets hint: ``F.mse_loss(F.conv2d(student, weight[..., None, None], bias), teacher)``
    for a 1x1 regressor ``weight`` of shape ``[C_t, C_s]`` (or ``[C_t, C_s, 1, 1]``), any number
    of spatial dims; the projection need not outlive the op.

    >>> w, b = torch.randn(5, 3), torch.randn(5)
    >>> ref = F.mse_loss(F.conv2d(fs, w[..., None, None], b), ft)
    >>> fusedkd.projected_feature_mse(fs, w, b, ft).allclose(ref)
    True
    """
    return _ops.projected_feature_mse(student, weight, bias, teacher, reduction)


def similarity_preserving(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving loss (Tung & Mori): ``G(x) = F.normalize(f @ f.T, dim=1)`` with
    ``f = x.flatten(1)``, loss ``(G(s) - G(t)).pow(2).sum() / N^2``.

    >>> def G(x): return F.normalize(x.flatten(1) @ x.flatten(1).T, dim=1)
    >>> fusedkd.similarity_preserving(fs, ft).allclose((G(fs) - G(ft)).pow(2).sum() / 2**2)
    True
    """
    return _ops.similarity_preserving(student, teacher)

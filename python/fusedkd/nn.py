"""``torch.nn`` loss modules over the fused ops: the constructor takes the op's options, ``forward``
the tensors. Each docstring names the plain-PyTorch composite the module replaces."""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import functional as F

__all__ = [
    "KDLoss",
    "KLDivLoss",
    "JSDLoss",
    "SoftMSELoss",
    "FeatureMSELoss",
    "AttentionTransferLoss",
    "SimilarityPreservingLoss",
    "FitNetHint",
]


class KDLoss(torch.nn.Module):
    """``hard_weight * CE + soft_weight * (T^2) * D`` in one fused pass (``fusedkd.kd_loss``).

    Replaces::

        hard = F.cross_entropy(s, y, ignore_index=-100)
        soft = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
        loss = hard_weight * hard + soft_weight * T * T * soft

    ``forward(student_logits, teacher_logits, labels=None)``; ``hard_weight`` must be 0 when no
    labels are given.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        soft_weight: float = 1.0,
        hard_weight: float = 0.0,
        divergence: str = "kl",
        beta: float = 0.5,
        ignore_index: int = -100,
        t2_scale: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.soft_weight = soft_weight
        self.hard_weight = hard_weight
        self.divergence = divergence
        self.beta = beta
        self.ignore_index = ignore_index
        self.t2_scale = t2_scale

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return F.kd_loss(
            student_logits, teacher_logits, labels, self.temperature, self.soft_weight, self.hard_weight,
            self.divergence, self.beta, self.ignore_index, self.t2_scale,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, soft_weight={self.soft_weight}, hard_weight={self.hard_weight}, "
            f"divergence={self.divergence!r}, beta={self.beta}, ignore_index={self.ignore_index}, "
            f"t2_scale={self.t2_scale}"
        )


class KLDivLoss(torch.nn.Module):
    """KL between softened distributions (``fusedkd.kl_div``). Replaces
    ``F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction=reduction,
    log_target=True)``; ``reverse=True`` swaps the roles (KL(student || teacher))."""

    def __init__(self, temperature: float = 1.0, reduction: str = "batchmean", reverse: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        self.reduction = reduction
        self.reverse = reverse

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.kl_div(student_logits, teacher_logits, self.temperature, self.reduction, self.reverse)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}, reverse={self.reverse}"


class JSDLoss(torch.nn.Module):
    """Generalized Jensen-Shannon divergence (``fusedkd.jsd``): ``beta KL(p || m) + (1 - beta)
    KL(q || m)``, ``m = beta p + (1 - beta) q``, p the teacher's and q the student's softmax at T."""

    def __init__(self, temperature: float = 1.0, beta: float = 0.5, reduction: str = "batchmean") -> None:
        super().__init__()
        self.temperature = temperature
        self.beta = beta
        self.reduction = reduction

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.jsd(student_logits, teacher_logits, self.temperature, self.beta, self.reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, beta={self.beta}, reduction={self.reduction!r}"


class SoftMSELoss(torch.nn.Module):
    """MSE of softened probabilities (``fusedkd.soft_mse``). Replaces
    ``F.mse_loss(F.softmax(s / T, -1), F.softmax(t / T, -1), reduction=reduction)``."""

    def __init__(self, temperature: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.temperature = temperature
        self.reduction = reduction

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.soft_mse(student_logits, teacher_logits, self.temperature, self.reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"


class FeatureMSELoss(torch.nn.Module):
    """``F.mse_loss(student, teacher, reduction=reduction)`` between feature maps, fused forward and
    backward (``fusedkd.feature_mse``)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.feature_mse(student, teacher, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class AttentionTransferLoss(torch.nn.Module):
    """Attention transfer (``fusedkd.attention_transfer``). Replaces
    ``(a(s) - a(t)).pow(2).mean()`` with ``a(x) = F.normalize(x.abs().pow(p).mean(1).flatten(1),
    dim=1)``; student and teacher channel counts may differ."""

    def __init__(self, p: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        self.p = p
        self.reduction = reduction

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.attention_transfer(student, teacher, self.p, self.reduction)

    def extra_repr(self) -> str:
        return f"p={self.p}, reduction={self.reduction!r}"


class SimilarityPreservingLoss(torch.nn.Module):
    """Similarity-preserving loss (``fusedkd.similarity_preserving``). Replaces
    ``(G(s) - G(t)).pow(2).sum() / N**2`` with ``G(x) = F.normalize(f @ f.T, dim=1)``,
    ``f = x.flatten(1)``."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.similarity_preserving(student, teacher)


class FitNetHint(torch.nn.Module):
    """FitNets hint: a 1x1 regressor from the student's channels to the teacher's, owned by the
    module and trained with the student, and the MSE of its output against the teacher's map
    (``fusedkd.projected_feature_mse``: the projection is never kept). Replaces::

        regressor = nn.Conv2d(student_channels, teacher_channels, 1, bias=bias)
        loss = F.mse_loss(regressor(student_map), teacher_map)

    The weight ``[teacher_channels, student_channels]`` and bias start as ``nn.Conv2d``'s
    (Kaiming-uniform with a = sqrt(5), bias uniform in +-1/sqrt(fan_in)), so a checkpoint's values
    move between the two unchanged (reshape the weight to ``[C_t, C_s, 1, 1]``).
    """

    def __init__(self, student_channels: int, teacher_channels: int, bias: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        if student_channels < 1 or teacher_channels < 1:
            raise ValueError(
                f"FitNetHint: student_channels and teacher_channels must be at least 1, got "
                f"{student_channels} and {teacher_channels}"
            )
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.reduction = reduction
        self.weight = torch.nn.Parameter(torch.empty(teacher_channels, student_channels))
        self.bias = torch.nn.Parameter(torch.empty(teacher_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.student_channels)
            torch.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.projected_feature_mse(student, self.weight, self.bias, teacher, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"student_channels={self.student_channels}, teacher_channels={self.teacher_channels}, "
            f"bias={self.bias is not None}, reduction={self.reduction!r}"
        )

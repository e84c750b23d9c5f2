"""Distilling a small classifier in a plain PyTorch training loop with fusedkd.

A teacher MLP is trained on a synthetic 10-class problem, then a smaller student learns from it
with ``fusedkd.nn.KDLoss`` (cross-entropy on the labels + KL to the teacher's softened outputs)
and a FitNets feature hint (``fusedkd.nn.FitNetHint``: a learned 1x1 regressor from the student's
hidden features to the teacher's). Nothing else changes in the loop: the losses are modules.

    python examples/python/distill_classifier.py [--steps 300] [--device cpu|cuda]

Exits non-zero unless the distillation loss decreases and the student beats chance clearly.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import fusedkd


class MLP(nn.Module):
    def __init__(self, inputs: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


def make_data(n: int, centres: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian clusters around the class centres."""
    classes, inputs = centres.shape
    labels = torch.randint(0, classes, (n,), generator=generator)
    return centres[labels] + torch.randn(n, inputs, generator=generator), labels


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x)[0].argmax(-1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    inputs, classes, batch = 32, 10, 128
    centres = torch.randn(classes, inputs, generator=g) * 0.6
    x, y = make_data(4096, centres, g)
    x_test, y_test = make_data(1024, centres, g)
    x, y, x_test, y_test = (v.to(args.device) for v in (x, y, x_test, y_test))

    # 1. The teacher: plain cross-entropy.
    teacher = MLP(inputs, 256, classes).to(args.device)
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    for step in range(args.steps):
        i = torch.randint(0, x.shape[0], (batch,), generator=g).to(args.device)
        loss = nn.functional.cross_entropy(teacher(x[i])[0], y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()

    # 2. The student: fused KD loss + a feature hint from its 32 hidden units to the teacher's 256.
    student = MLP(inputs, 32, classes).to(args.device)
    kd = fusedkd.nn.KDLoss(temperature=4.0, soft_weight=0.9, hard_weight=0.1, t2_scale=True)
    hint = fusedkd.nn.FitNetHint(student_channels=32, teacher_channels=256).to(args.device)
    opt = torch.optim.Adam([*student.parameters(), *hint.parameters()], lr=1e-3)
    losses = []
    for step in range(args.steps):
        i = torch.randint(0, x.shape[0], (batch,), generator=g).to(args.device)
        with torch.no_grad():
            teacher_logits, teacher_features = teacher(x[i])
        student_logits, student_features = student(x[i])
        loss = kd(student_logits, teacher_logits, y[i]) + 0.1 * hint(student_features, teacher_features)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    teacher_acc, student_acc = accuracy(teacher, x_test, y_test), accuracy(student, x_test, y_test)
    print(f"{hint}\ndistillation loss {first:.4f} -> {last:.4f} over {args.steps} steps; "
          f"test accuracy: teacher {teacher_acc:.3f}, student {student_acc:.3f} (chance {1 / classes:.3f})")
    assert last < first, "the distillation loss did not decrease"
    assert student_acc > 3 / classes, "the student did not learn"


if __name__ == "__main__":
    main()

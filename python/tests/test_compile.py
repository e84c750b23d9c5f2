"""torch.compile(fullgraph=True) of a small student's training step with each fusedkd.nn module:
the student's forward and the loss are one graph through the ops' Meta kernels, AOT autograd
derives the backward graph from the ops' autograd (backend "aot_eager": Dynamo, fake tensors, AOT
autograd and functionalization, without generating code), and the loss and every parameter's
gradient equal eager mode's."""
import pytest
import torch

import fusedkd.nn as kdnn

torch.manual_seed(0)


class Student(torch.nn.Module):
    """A tiny CNN: a feature map [N, 4, 6, 6] and logits [N, 10]."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 36, 10)

    def forward(self, x):
        features = torch.relu(self.conv(x))
        return features, self.head(features.flatten(1))


def make_case(name):
    """(module, loss_of(module, features, logits, teacher_features, teacher_logits, labels))."""
    logit_losses = {
        "KDLoss": kdnn.KDLoss(temperature=2.0, soft_weight=0.7, hard_weight=0.3, t2_scale=True),
        "KLDivLoss": kdnn.KLDivLoss(temperature=2.0),
        "JSDLoss": kdnn.JSDLoss(temperature=2.0, beta=0.3),
        "SoftMSELoss": kdnn.SoftMSELoss(temperature=2.0),
    }
    if name in logit_losses:
        module = logit_losses[name]
        if name == "KDLoss":
            return module, lambda m, f, z, tf, tz, y: m(z, tz, y)
        return module, lambda m, f, z, tf, tz, y: m(z, tz)
    if name == "FitNetHint":
        return kdnn.FitNetHint(4, 6), lambda m, f, z, tf, tz, y: m(f, tf)
    module = {"FeatureMSELoss": kdnn.FeatureMSELoss(), "AttentionTransferLoss": kdnn.AttentionTransferLoss(),
              "SimilarityPreservingLoss": kdnn.SimilarityPreservingLoss()}[name]
    if name == "FeatureMSELoss":
        return module, lambda m, f, z, tf, tz, y: m(f, tf[:, :4])
    return module, lambda m, f, z, tf, tz, y: m(f, tf)


MODULES = ["KDLoss", "KLDivLoss", "JSDLoss", "SoftMSELoss", "FeatureMSELoss", "AttentionTransferLoss",
           "SimilarityPreservingLoss", "FitNetHint"]


@pytest.mark.parametrize("name", MODULES)
def test_compiled_training_step_matches_eager(name):
    torch._dynamo.reset()
    x = torch.randn(8, 1, 6, 6)
    y = torch.randint(0, 10, (8,))
    teacher_features = torch.randn(8, 6, 6, 6)
    teacher_logits = torch.randn(8, 10)
    student = Student()
    module, loss_of = make_case(name)
    params = list(student.parameters()) + list(module.parameters())

    def forward():
        features, logits = student(x)
        return loss_of(module, features, logits, teacher_features, teacher_logits, y)

    def step(fn):
        for p in params:
            p.grad = None
        loss = fn()
        loss.backward()
        return loss.detach(), [None if p.grad is None else p.grad.clone() for p in params]

    eager_loss, eager_grads = step(forward)
    loss, grads = step(torch.compile(forward, backend="aot_eager", fullgraph=True))
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert sum(g is not None for g in grads) >= 2  # the loss reaches the student's parameters
    for g, e in zip(grads, eager_grads):
        assert (g is None) == (e is None)
        if g is not None:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["kd_loss", "feature_mse"])
def test_compiled_float16_gradient_through_a_large_conversion(op):
    """A float16 input whose gradient is wanted is read as float32 and its gradient cast back; eager,
    such copies of 2 MiB and more come from fusedkd's huge-page allocator, which must not be used
    on the functional tensors the compiled backward is traced with (here the float16 gradient the
    backward casts to is over 32 MiB)."""
    import fusedkd

    torch._dynamo.reset()
    if op == "kd_loss":
        s = (torch.randn(544, 32768) * 2).half().requires_grad_()  # 35.7 MB (the cast gradient)
        t = (torch.randn(544, 32768) * 2).half()
        y = torch.randint(0, 32768, (544,))

        def loss(s):
            return fusedkd.kd_loss(s, t, y, temperature=2.0) * 3.0
    else:
        s = torch.randn(128, 64, 48, 48).half().requires_grad_()  # 37.7 MB (the cast gradient)
        t = torch.randn(128, 64, 48, 48).half()

        def loss(s):
            return fusedkd.feature_mse(s, t) * 3.0
    eager, = torch.autograd.grad(loss(s), [s])
    # Inductor's AOT autograd traces the backward with functional tensors at compile time (the
    # "aot_eager" backend did not reach the conversion); no cache may stand in for that trace.
    with torch._functorch.config.patch(enable_autograd_cache=False), \
            torch._inductor.config.patch(fx_graph_cache=False):
        compiled, = torch.autograd.grad(torch.compile(loss, fullgraph=True)(s), [s])
    assert compiled.dtype == torch.float16
    assert torch.equal(compiled, eager)

"""The functional API (keyword arguments and defaults of the operator contract) and the fusedkd.nn
loss modules against the plain-PyTorch composites they replace: values and gradients in float32
and bfloat16 (CPU; CUDA where the ops have CUDA kernels and a device exists), FitNetHint's
initialisation, state_dict and repr, and errors that name the argument."""
import math

import pytest
import torch
import torch.nn.functional as F

import fusedkd
import fusedkd.nn as knn

HAVE_CUDA = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "fusedkd::_soft_target_forward", "CUDA"
)
DEVICES = ["cpu"] + (["cuda"] if HAVE_CUDA else [])
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def check(module_or_fn, composite, inputs, dtype, needs_grad):
    """Value and gradients (of the inputs flagged in needs_grad) against the float64 composite."""
    ours = [x.detach().to(dtype).requires_grad_(g) if x.is_floating_point() else x for x, g in zip(inputs, needs_grad)]
    ref = [x.detach().double().requires_grad_(g) if x.is_floating_point() else x for x, g in zip(inputs, needs_grad)]
    out, expected = module_or_fn(*ours), composite(*ref)
    assert out.shape == expected.shape
    tol = TOLERANCE[dtype]
    assert rel_err(out, expected) < tol
    grads = torch.autograd.grad(out.sum(), [x for x, g in zip(ours, needs_grad) if g])
    ref_grads = torch.autograd.grad(expected.sum(), [x for x, g in zip(ref, needs_grad) if g])
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert rel_err(g, r) < tol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_soft_target_modules_match_their_composites(device, dtype):
    torch.manual_seed(0)
    s, t = torch.randn(6, 37, device=device) * 3, torch.randn(6, 37, device=device) * 3
    y = torch.randint(0, 37, (6,), device=device)
    y[1] = -100
    T = 2.0

    def kd_composite(s, t, y):
        valid = y != -100
        soft = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="none", log_target=True)
        return 0.3 * F.cross_entropy(s, y) + 0.7 * T * T * soft.sum(-1)[valid].mean()

    check(knn.KDLoss(temperature=T, soft_weight=0.7, hard_weight=0.3, t2_scale=True), kd_composite, [s, t, y], dtype,
          [True, True, False])
    check(knn.KLDivLoss(temperature=T, reverse=True),
          lambda s, t: F.kl_div(F.log_softmax(t / T, -1), F.log_softmax(s / T, -1), reduction="batchmean",
                                log_target=True),
          [s, t], dtype, [True, True])
    check(knn.SoftMSELoss(temperature=T),
          lambda s, t: F.mse_loss(F.softmax(s / T, -1), F.softmax(t / T, -1)), [s, t], dtype, [True, False])

    def jsd_composite(s, t, beta=0.3):
        lq, lp = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
        lm = torch.logsumexp(torch.stack([lp + math.log(beta), lq + math.log(1 - beta)]), 0)
        kl = lambda a, b: (a.exp() * (a - b)).sum(-1)  # noqa: E731
        return (beta * kl(lp, lm) + (1 - beta) * kl(lq, lm)).mean()

    check(knn.JSDLoss(temperature=T, beta=0.3), jsd_composite, [s, t], dtype, [True, True])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_feature_modules_match_their_composites(device, dtype):
    torch.manual_seed(1)
    fs, ft = torch.randn(4, 8, 5, 5, device=device), torch.randn(4, 24, 5, 5, device=device)
    same = torch.randn(4, 8, 5, 5, device=device)

    def attention(x):
        return F.normalize(x.abs().pow(2).mean(1).flatten(1), dim=1)

    def gram(x):
        f = x.flatten(1)
        return F.normalize(f @ f.t(), dim=1)

    check(knn.FeatureMSELoss(), F.mse_loss, [fs, same], dtype, [True, True])
    check(knn.AttentionTransferLoss(), lambda a, b: (attention(a) - attention(b)).pow(2).mean(), [fs, ft], dtype,
          [True, True])
    check(knn.SimilarityPreservingLoss(), lambda a, b: (gram(a) - gram(b)).pow(2).sum() / a.shape[0] ** 2, [fs, ft],
          dtype, [True, False])
    hint = knn.FitNetHint(8, 24).to(device)
    w, b = hint.weight.detach(), hint.bias.detach()
    check(lambda x, t: fusedkd.projected_feature_mse(x, w.to(x.dtype), b.to(x.dtype), t),
          lambda x, t: F.mse_loss(F.conv2d(x, w.double()[..., None, None], b.double()), t), [fs, ft], dtype,
          [True, False])


def test_functional_keywords_and_defaults():
    torch.manual_seed(2)
    s, t = torch.randn(5, 9), torch.randn(5, 9)
    y = torch.randint(0, 9, (5,))
    a = fusedkd.kd_loss(s, t, labels=y, temperature=3.0, soft_weight=0.5, hard_weight=0.5, divergence="jsd",
                        beta=0.2, ignore_index=-1, t2_scale=True)
    b = torch.ops.fusedkd.kd_loss(s, t, y, 3.0, 0.5, 0.5, "jsd", 0.2, -1, True)
    assert torch.equal(a, b)
    assert torch.equal(fusedkd.kd_loss(s, t), torch.ops.fusedkd.kd_loss(s, t, None, 1.0, 1.0, 0.0, "kl", 0.5, -100, False))
    assert torch.equal(fusedkd.kl_div(s, t), fusedkd.kl_div(s, t, temperature=1.0, reduction="batchmean", reverse=False))
    assert torch.equal(fusedkd.softmax_t(s, temperature=2.0), torch.ops.fusedkd.softmax_t(s, 2.0))
    fs, ft = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    assert torch.equal(fusedkd.attention_transfer(fs, ft, p=2.0, reduction="sum"),
                       torch.ops.fusedkd.attention_transfer(fs, ft, 2.0, "sum"))
    for name in fusedkd.functional.__all__:
        assert getattr(fusedkd, name).__doc__, name


def test_fit_net_hint_init_state_dict_and_repr():
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(16, 64, 1)
    torch.manual_seed(3)
    hint = knn.FitNetHint(16, 64)
    # nn.Conv2d's initialisation, value for value.
    assert torch.equal(hint.weight, conv.weight.view(64, 16))
    assert torch.equal(hint.bias, conv.bias)
    again = knn.FitNetHint(16, 64)
    again.load_state_dict(hint.state_dict())
    x, t = torch.randn(3, 16, 7, 7), torch.randn(3, 64, 7, 7)
    assert torch.equal(again(x, t), hint(x, t))
    assert rel_err(hint(x, t), F.mse_loss(conv(x), t)) < 1e-6
    assert "student_channels=16, teacher_channels=64, bias=True" in repr(hint)
    assert knn.FitNetHint(4, 8, bias=False).bias is None
    assert "temperature=4.0" in repr(knn.KDLoss(temperature=4.0))
    with pytest.raises(ValueError, match="student_channels"):
        knn.FitNetHint(0, 8)


def test_bad_input_names_the_argument():
    s = torch.randn(4, 5)
    with pytest.raises(RuntimeError, match="same shape"):
        knn.KLDivLoss()(s, torch.randn(4, 6))
    with pytest.raises(RuntimeError, match="temperature"):
        knn.KDLoss(temperature=0.0)(s, s)
    with pytest.raises(RuntimeError, match="hard_weight"):
        knn.KDLoss(hard_weight=1.0)(s, s)
    with pytest.raises(RuntimeError, match="beta"):
        knn.JSDLoss(beta=1.5)(s, s)
    with pytest.raises(RuntimeError, match="reduction"):
        knn.FeatureMSELoss(reduction="average")(s, s)

"""torch.ops.fusedkd.kl_div / jsd / soft_mse / kd_loss from Python: parity with the
torch.nn.functional compositions (the seed's examples among them), gradcheck, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import fusedkd  # noqa: F401  (loads the op library)

ops = torch.ops.fusedkd
HAVE_CUDA = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "fusedkd::_soft_target_forward", "CUDA"
)
DEVICES = ["cpu"] + (["cuda"] if HAVE_CUDA else [])


def kl_rows(target_log, input_log):
    return F.kl_div(input_log, target_log, reduction="none", log_target=True).sum(-1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
@pytest.mark.parametrize("reverse", [False, True])
def test_kl_div_matches_functional(device, reduction, reverse):
    s = torch.randn(4, 3, 50, dtype=torch.float64, device=device, requires_grad=True)
    t = torch.randn(4, 3, 50, dtype=torch.float64, device=device)
    ours = ops.kl_div(s, t, 2.0, reduction, reverse)
    lq, lp = F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1)
    rows = kl_rows(lq, lp) if reverse else kl_rows(lp, lq)
    ref = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / (12 * 50), "batchmean": rows.sum() / 12}[reduction]
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    w = torch.randn_like(ours)
    g, = torch.autograd.grad((ours * w).sum(), s)
    g_ref, = torch.autograd.grad((ref * w).sum(), s)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_seed_examples(device):
    torch.manual_seed(0)
    s = torch.randn(64, 10, device=device, requires_grad=True)
    t = torch.randn(64, 10, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    alpha = 0.3
    ex1 = F.cross_entropy(s, y) + alpha * torch.nn.MSELoss()(torch.softmax(s / 5, 1), torch.softmax(t / 5, 1))
    ex2 = F.cross_entropy(s, y) + alpha * torch.nn.KLDivLoss(reduction="batchmean")(
        torch.log_softmax(s / 10, 1), torch.softmax(t / 10, 1)
    )
    ours1 = ops.kd_loss(s, t, y, temperature=5.0, soft_weight=alpha, hard_weight=1.0, divergence="mse")
    ours2 = ops.kd_loss(s, t, y, temperature=10.0, soft_weight=alpha, hard_weight=1.0, divergence="kl")
    for ours, ref in ((ours1, ex1), (ours2, ex2)):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.autograd.grad(ours, s)[0], torch.autograd.grad(ref, s)[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd", "mse"])
def test_gradcheck_kd_loss(divergence):
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, -100, 6, 1])
    assert torch.autograd.gradcheck(
        lambda a, b: ops.kd_loss(a, b, y, 1.7, 0.6, 0.4, divergence, 0.3, -100, True), (s, t)
    )


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gradcheck_jsd_per_row(beta):
    s = torch.randn(3, 2, 9, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 2, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.jsd(a, b, 0.8, beta, "none"), (s, t))


def test_mixed_dtypes_and_bf16():
    s = torch.randn(16, 300, requires_grad=True)
    t = torch.randn(16, 300).bfloat16()
    ours = ops.kl_div(s, t, 2.0)
    ref = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t.float() / 2, -1), reduction="batchmean", log_target=True)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


def test_errors():
    s, t = torch.zeros(4, 5), torch.zeros(4, 5)
    with pytest.raises(RuntimeError, match="same shape"):
        ops.kl_div(s, torch.zeros(4, 6))
    with pytest.raises(RuntimeError, match="reduction"):
        ops.soft_mse(s, t, 1.0, "average")
    with pytest.raises(RuntimeError, match="beta must be in"):
        ops.jsd(s, t, 1.0, 2.0)
    with pytest.raises(RuntimeError, match="temperature"):
        ops.kd_loss(s, t, None, math.nan)
    with pytest.raises(RuntimeError, match="needs labels"):
        ops.kd_loss(s, t, None, 1.0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="outside"):
        ops.kd_loss(s, t, torch.tensor([0, 1, 9, 2]), 1.0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="divergence"):
        ops.kd_loss(s, t, None, 1.0, 1.0, 0.0, "hellinger")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    s = torch.randn(4, 9, device=device, requires_grad=True)
    t = torch.randn(4, 9, device=device, requires_grad=True)
    y = torch.randint(0, 9, (4,), device=device)
    torch.library.opcheck(ops.kl_div, (s, t, 2.0))
    torch.library.opcheck(ops.jsd, (s, t, 2.0, 0.3))
    torch.library.opcheck(ops.soft_mse, (s, t, 2.0, "none"))
    torch.library.opcheck(ops.kd_loss, (s, t, y, 2.0, 0.5, 1.0))

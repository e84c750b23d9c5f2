"""torch.ops.fusedkd.feature_mse / attention_transfer / projected_feature_mse /
similarity_preserving from Python: parity with the torch.nn.functional compositions (the seed's
feature-map example among them), gradcheck, torch.library.opcheck, errors."""
import pytest
import torch
import torch.nn.functional as F

import fusedkd  # noqa: F401  (loads the op library)

ops = torch.ops.fusedkd
HAVE_CUDA = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "fusedkd::_feature_mse_forward", "CUDA"
)
DEVICES = ["cpu"] + (["cuda"] if HAVE_CUDA else [])


def attention_map(x, p):
    return F.normalize(x.abs().pow(p).mean(1).reshape(x.shape[0], -1), dim=1)


def gram(x):
    f = x.reshape(x.shape[0], -1)
    return F.normalize(f @ f.t(), dim=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_seed_feature_map_example(device, channels_last):
    # The seed's third example: MSE between an intermediate student map and the teacher's.
    student = torch.randn(8, 16, 7, 7, device=device, requires_grad=True)
    teacher = torch.randn(8, 16, 7, 7, device=device)
    if channels_last:
        student = student.detach().to(memory_format=torch.channels_last).requires_grad_()
    loss = ops.feature_mse(student, teacher)
    ref_student = student.detach().clone().requires_grad_()
    ref = torch.nn.MSELoss()(ref_student, teacher)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(student.grad, ref_student.grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [1.0, 2.0, 2.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean", "none"])
def test_attention_transfer_matches_composite(device, p, reduction):
    s = torch.randn(4, 8, 5, 6, device=device, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, 5, 6, device=device, dtype=torch.float64, requires_grad=True)
    d = (attention_map(s, p) - attention_map(t, p)).pow(2)
    ref = {"mean": d.mean(), "sum": d.sum(), "batchmean": d.sum() / 4, "none": d.sum(1)}[reduction]
    out = ops.attention_transfer(s, t, p, reduction)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad((out * w).sum(), (s, t)), torch.autograd.grad((ref * w).sum(), (s, t)))


@pytest.mark.parametrize("device", DEVICES)
def test_projected_and_similarity_match_composites(device):
    x = torch.randn(4, 6, 5, 5, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 6, 1, 1, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, device=device, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, 5, 5, device=device, dtype=torch.float64, requires_grad=True)
    out = ops.projected_feature_mse(x, w, b, t)
    ref = F.mse_loss(F.conv2d(x, w, b), t)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, (x, w, b, t)), torch.autograd.grad(ref, (x, w, b, t)))
    out = ops.similarity_preserving(x, t)
    ref = (gram(x) - gram(t)).pow(2).sum() / 16
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, (x, t)), torch.autograd.grad(ref, (x, t)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wanted", ["x", "w", "x and w"])
def test_projected_grouped_samples_each_gradient(device, wanted):
    # 100 samples of 7 x 7: on the CPU channels-first samples this small are multiplied in groups
    # (11 a GEMM, so 10 units: the weight's sum split over the threads, each unit's dX from the same
    # packed dL/dy); each gradient alone and both.
    x = torch.randn(100, 6, 7, 7, device=device, dtype=torch.float64)
    w = torch.randn(5, 6, 1, 1, device=device, dtype=torch.float64)
    t = torch.randn(100, 5, 7, 7, device=device, dtype=torch.float64)
    leaves = [v.requires_grad_() for v, name in ((x, "x"), (w, "w")) if name in wanted.split(" and ")]
    out = ops.projected_feature_mse(x, w, None, t)
    ref = F.mse_loss(F.conv2d(x, w), t)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, leaves), torch.autograd.grad(ref, leaves))


def test_gradcheck():
    opts = dict(dtype=torch.float64, requires_grad=True)
    s, t = torch.randn(2, 3, 4, 3, **opts), torch.randn(2, 3, 4, 3, **opts)
    assert torch.autograd.gradcheck(lambda a, b: ops.feature_mse(a, b, "none"), (s, t))
    t2 = torch.randn(2, 5, 4, 3, **opts)
    assert torch.autograd.gradcheck(lambda a, b: ops.attention_transfer(a, b, 3.0, "none"), (s, t2))
    w, bias = torch.randn(5, 3, **opts), torch.randn(5, **opts)
    assert torch.autograd.gradcheck(lambda a, m, c, b: ops.projected_feature_mse(a, m, c, b, "none"), (s, w, bias, t2))
    assert torch.autograd.gradcheck(ops.similarity_preserving, (s, t2))


def test_errors():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    with pytest.raises(RuntimeError, match="same shape"):
        ops.feature_mse(s, t)
    with pytest.raises(RuntimeError, match="p must be"):
        ops.attention_transfer(s, t, -1.0)
    with pytest.raises(RuntimeError, match="weight"):
        ops.projected_feature_mse(s, torch.randn(5, 4), None, t)
    with pytest.raises(RuntimeError, match="batch"):
        ops.similarity_preserving(s, t[:1])
    with pytest.raises(RuntimeError, match="reduction"):
        ops.feature_mse(s, s, "batchmean")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    s = torch.randn(3, 4, 5, 2, device=device, requires_grad=True)
    t = torch.randn(3, 2, 5, 2, device=device, requires_grad=True)
    w = torch.randn(2, 4, device=device, requires_grad=True)
    b = torch.randn(2, device=device, requires_grad=True)
    torch.library.opcheck(ops.feature_mse, (s, torch.randn_like(s, requires_grad=True), "none"))
    torch.library.opcheck(ops.attention_transfer, (s, t, 2.0, "batchmean"))
    torch.library.opcheck(ops.projected_feature_mse, (s, w, b, t, "mean"))
    torch.library.opcheck(ops.similarity_preserving, (s, t))

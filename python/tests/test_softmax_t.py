"""torch.ops.fusedkd.softmax_t / log_softmax_t from Python: parity with torch.nn.functional,
gradients (gradcheck in float64), the op contract (torch.library.opcheck), errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import fusedkd

# CUDA cases need a device and a build with the CUDA kernels.
HAVE_CUDA = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "fusedkd::softmax_t", "CUDA"
)
DEVICES = ["cpu"] + (["cuda"] if HAVE_CUDA else [])
OPS = [
    (torch.ops.fusedkd.softmax_t, lambda x, t: F.softmax(x / t, dim=-1)),
    (torch.ops.fusedkd.log_softmax_t, lambda x, t: F.log_softmax(x / t, dim=-1)),
]


def test_cuda_presence_is_reported():
    if not torch.cuda.is_available():
        pytest.skip("skipped: no CUDA device")
    if not HAVE_CUDA:
        pytest.skip("skipped: built without CUDA")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,ref", OPS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-6), (torch.float64, 1e-12), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 3, 1031), (4, 20000)])
@pytest.mark.parametrize("temperature", [0.05, 1.0, 4.0])
def test_matches_functional(device, op, ref, dtype, tol, shape, temperature):
    g = torch.Generator().manual_seed(hash((shape, temperature)) % 2**31)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype).to(device)
    out = op(x, temperature)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    expected = ref(x.double(), temperature)
    err = (out.double() - expected).norm() / expected.norm().clamp_min(1e-30)
    assert err < tol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,ref", OPS)
def test_gradcheck_float64(device, op, ref):
    x = torch.randn(3, 2, 17, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: op(t, 1.7), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,ref", OPS)
def test_opcheck(device, op, ref):
    x = torch.randn(4, 33, device=device, requires_grad=True)
    torch.library.opcheck(op, (x, 2.0))


@pytest.mark.parametrize("op,ref", OPS)
def test_python_wrappers_match_ops(op, ref):
    x = torch.randn(5, 9)
    wrapper = fusedkd.softmax_t if op is torch.ops.fusedkd.softmax_t else fusedkd.log_softmax_t
    assert torch.equal(wrapper(x, 3.0), op(x, 3.0))
    assert torch.equal(wrapper(x), op(x, 1.0))


@pytest.mark.parametrize("op,ref", OPS)
def test_bad_inputs_raise(op, ref):
    with pytest.raises(RuntimeError, match="logits must be float32"):
        op(torch.zeros(3, 4, dtype=torch.long), 1.0)
    with pytest.raises(RuntimeError, match="at least 1 dim"):
        op(torch.tensor(1.0), 1.0)
    with pytest.raises(RuntimeError, match=r"last dim \(V\)"):
        op(torch.zeros(3, 0), 1.0)
    for bad in (0.0, -2.0, math.nan, math.inf):
        with pytest.raises(RuntimeError, match="temperature must be finite and > 0"):
            op(torch.zeros(3, 4), bad)


def test_torch_compile_traces_through_meta_kernel():
    x = torch.randn(6, 40)
    compiled = torch.compile(lambda t: torch.ops.fusedkd.softmax_t(t, 2.0) * 2, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x), F.softmax(x / 2.0, dim=-1) * 2, atol=1e-6)

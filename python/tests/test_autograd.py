"""The loss ops' autograd (torch_ext/autograd.h: the gradient comes from the forward): what the
first backward reads. It uses the gradients the forward wrote, so it reads no saved input: an input
changed in place after the forward does not matter to it, and saved-tensor hooks are not asked to
unpack anything. A second backward (retain_graph) recomputes from the saved inputs, so it does."""
import pytest
import torch
import torch.nn.functional as F

import fusedkd

LOSSES = {
    "kd_loss": lambda s, t: fusedkd.kd_loss(s, t, torch.tensor([1, 0, 3]), temperature=2.0, hard_weight=0.5),
    "jsd": lambda s, t: fusedkd.jsd(s, t, temperature=2.0),
    "feature_mse": lambda s, t: fusedkd.feature_mse(s, t),
    "similarity_preserving": lambda s, t: fusedkd.similarity_preserving(s, t),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_first_backward_ignores_inputs_changed_after_the_forward(name):
    loss_of = LOSSES[name]
    s0 = torch.randn(3, 7, dtype=torch.float64)
    t = torch.randn(3, 7, dtype=torch.float64)
    s_ref = s0.clone().requires_grad_()
    g_ref, = torch.autograd.grad(loss_of(s_ref, t.clone()), s_ref)

    leaf = s0.clone().requires_grad_()
    s = leaf * 1.0  # a non-leaf, so it may be changed in place
    teacher = t.clone()
    loss = loss_of(s, teacher)
    teacher.mul_(3.0)
    with torch.no_grad():
        s.add_(1.0)
    g, = torch.autograd.grad(loss, leaf, retain_graph=True)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
    # The second backward recomputes from the saved inputs, which have changed: autograd says so.
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss, leaf)


def test_saved_tensor_hooks_unpack_only_when_needed():
    unpacked = []

    def pack(x):
        return x

    def unpack(x):
        unpacked.append(tuple(x.shape))
        return x

    s = torch.randn(4, 9, requires_grad=True)
    t = torch.randn(4, 9)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        loss = fusedkd.kd_loss(s, t, temperature=2.0)
    loss.backward(retain_graph=True)
    assert unpacked == []  # the first backward uses the forward's gradient
    loss.backward()
    assert unpacked == [(4, 9), (4, 9)]  # the recompute reads student and teacher

    # projected_feature_mse's backward runs the projection's GEMMs: it reads x and W.
    unpacked.clear()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        loss = fusedkd.projected_feature_mse(x, w, None, y)
    loss.backward()
    assert (2, 3, 4, 4) in unpacked and (5, 3) in unpacked
    gx, gw = torch.autograd.grad(F.mse_loss(F.conv2d(x, w[:, :, None, None]), y), (x, w))
    torch.testing.assert_close(x.grad, gx)
    torch.testing.assert_close(w.grad, gw)


@pytest.mark.parametrize("want", [(True, False), (False, True), (True, True), (False, False)])
@pytest.mark.parametrize("dtypes", [(torch.float16, torch.float16), (torch.float16, torch.float32),
                                    (torch.bfloat16, torch.float16), (torch.float32, torch.float64)])
def test_internal_ops_meta_kernels_match_the_cpu_outputs(dtypes, want):
    # Every output of the fused internal ops, wanted gradient buffers and empty placeholders alike,
    # has the same dtype and shape from the Meta kernel as from the CPU one (torch.compile traces
    # with the Meta kernels); float16 gradient buffers are float32 (gradient_buffer_type).
    sd, td = dtypes
    gs, gt = want
    s, t = torch.randn(3, 4, 5, 5).to(sd), torch.randn(3, 4, 5, 5).to(td)
    t6 = torch.randn(3, 6, 5, 5).to(td)
    w = torch.randn(6, 4)
    ops = torch.ops.fusedkd
    calls = {
        "soft_target": lambda s, t, w, t6: ops._soft_target_forward(s.flatten(1), t.flatten(1), None, 2.0, 0, 0.5, -100,
                                                                  1.0, 0.0, False, True, gs, gt),
        "feature_mse": lambda s, t, w, t6: ops._feature_mse_forward(s, t, 2, gs, gt),
        "attention_transfer": lambda s, t, w, t6: ops._attention_transfer_forward(s, t6, 2.0, 2, gs, gt),
        "similarity_preserving": lambda s, t, w, t6: ops._similarity_preserving_forward(s, t6, gs, gt),
        "projected_feature_mse": lambda s, t, w, t6: ops._projected_feature_mse_forward(s, w, None, t6, 2, gs, gt),
    }
    for name, call in calls.items():
        real = call(s, t, w, t6)
        meta = call(*(x.to("meta") for x in (s, t, w, t6)))
        for k, (a, b) in enumerate(zip(real, meta)):
            assert (a.dtype, tuple(a.shape)) == (b.dtype, tuple(b.shape)), (name, k, a.dtype, b.dtype, a.shape, b.shape)

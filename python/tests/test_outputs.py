"""Large CPU outputs come from fusedkd's huge-page allocator (torch_ext/outputs.h): they must be
ordinary tensors (resizable, freed, usable as .grad) with the same bits as with the allocator off
(FUSEDKD_CPU_HUGE_PAGES=0, read once per process: compared in a subprocess). Freed ones are kept
for reuse (FUSEDKD_CPU_OUTPUT_CACHE_MB): no page faults, no stale values, and released on demand."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import torch

import fusedkd

def _env(**settings):
    """The environment of a probe subprocess: this one's, with `settings` (the variables fusedkd reads
    once per process) and the package's parent directory first on PYTHONPATH."""
    python_dir = os.path.dirname(os.path.dirname(os.path.abspath(fusedkd.__file__)))
    return dict(os.environ, **settings, PYTHONPATH=os.pathsep.join([python_dir, os.environ.get("PYTHONPATH", "")]))


# Outputs of 2 MiB and more take the huge-page path: [8400 x 1000] float32 is 33.6 MB.
PROBE = """
import torch, fusedkd
g = torch.Generator().manual_seed(5)
s = torch.randn(8400, 1000, generator=g).requires_grad_()
t = torch.randn(8400, 1000, generator=g)
f = torch.randn(256, 32, 32, 32, generator=g).requires_grad_()
outs = [fusedkd.softmax_t(s, temperature=2.0)]
outs += torch.autograd.grad(fusedkd.kd_loss(s, t, temperature=2.0), [s])
outs += torch.autograd.grad(fusedkd.feature_mse(f, f.detach() * 0.5), [f])
outs += torch.autograd.grad((fusedkd.softmax_t(s, temperature=2.0) * t).sum(), [s])
torch.save([o.detach() for o in outs], {path!r})
"""


def test_large_outputs_are_ordinary_tensors_with_the_same_bits(tmp_path):
    results = {}
    for setting in ("1", "0"):
        path = str(tmp_path / f"outs{setting}.pt")
        subprocess.run([sys.executable, "-c", PROBE.format(path=path)], env=_env(FUSEDKD_CPU_HUGE_PAGES=setting),
                       check=True)
        results[setting] = torch.load(path)
    for a, b in zip(results["1"], results["0"]):
        assert torch.equal(a, b)


def test_large_gradient_becomes_a_resizable_grad():
    s = torch.randn(8400, 1000, requires_grad=True)
    t = torch.randn(8400, 1000)
    for _ in range(2):  # the first backward hands the buffer over as .grad, the second adds to it
        fusedkd.kl_div(s, t, temperature=2.0).backward()
    ref = 2 * torch.autograd.grad(fusedkd.kl_div(s, t, temperature=2.0), [s])[0]
    torch.testing.assert_close(s.grad, ref)
    s.grad.resize_(9000, 1000)  # a storage that can grow (LibTorch's allocator takes over)
    s.grad.zero_()
    out = fusedkd.softmax_t(s.detach(), temperature=2.0)
    out.resize_(10)
    assert out.shape == (10,)


def test_large_gradient_lies_on_huge_pages():
    import re

    import pytest

    mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    if "[never]" in mode:
        pytest.skip("transparent huge pages are off on this machine")
    if os.environ.get("FUSEDKD_CPU_HUGE_PAGES") == "0":
        pytest.skip("fusedkd's huge-page allocator is turned off (FUSEDKD_CPU_HUGE_PAGES=0)")

    def huge_kb():
        return int(re.search(r"AnonHugePages:\s+(\d+)", open("/proc/self/smaps_rollup").read()).group(1))

    # 64 MiB: above glibc's largest mmap threshold (32 MiB), so the buffer is always fresh memory
    # (a smaller one may reuse heap pages faulted earlier, which madvise does not turn into huge ones).
    s, t = torch.randn(4096, 4096, requires_grad=True), torch.randn(4096, 4096)
    fusedkd.release_cpu_output_cache()  # a block kept from an earlier test would be no fresh memory
    before = huge_kb()
    grad, = torch.autograd.grad(fusedkd.kd_loss(s, t, temperature=2.0), [s])
    assert huge_kb() - before >= 32 * 1024, "the 64 MiB gradient is mostly not on 2 MiB pages"
    del grad


def _minor_faults():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# Run in a subprocess with the cache setting given: a warm-up call, then the faults of a second
# call whose 64 MiB gradient could reuse the first one's freed block.
FAULTS_PROBE = """
import resource, torch, fusedkd
s, t = torch.randn(4096, 4096, requires_grad=True), torch.randn(4096, 4096)
for _ in range(2):
    torch.autograd.grad(fusedkd.kd_loss(s, t, temperature=2.0), [s])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
grad, = torch.autograd.grad(fusedkd.kd_loss(s, t, temperature=2.0), [s])
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_with_cache(setting):
    env = _env(FUSEDKD_CPU_OUTPUT_CACHE_MB=setting, FUSEDKD_CPU_HUGE_PAGES="1")
    out = subprocess.run([sys.executable, "-c", FAULTS_PROBE], env=env, check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1])


def test_a_freed_large_gradient_is_reused_without_page_faults():
    # 64 MiB is 32 huge pages or 16,384 small ones: a fresh block faults at least 32 times.
    cached, uncached = _faults_with_cache("1024"), _faults_with_cache("0")
    assert uncached >= 32, uncached
    assert cached < 16, (cached, uncached)


EVICTION_PROBE = """
import torch, fusedkd
s, t = torch.randn(4096, 4096, requires_grad=True), torch.randn(4096, 4096)
grads = [torch.autograd.grad(fusedkd.kd_loss(s, t, temperature=2.0), [s])[0] for _ in range(3)]
expected = grads[0].clone()
del grads  # three 64 MiB blocks freed
got, = torch.autograd.grad(fusedkd.kd_loss(s, t, temperature=2.0), [s])  # a kept block reused
assert torch.equal(got, expected)
del got
print(fusedkd.release_cpu_output_cache(), fusedkd.release_cpu_output_cache())
"""


@pytest.mark.parametrize("capacity_mb, kept_blocks", [("0", 0), ("63", 0), ("64", 1), ("150", 2), ("1024", 3)])
def test_the_cache_keeps_what_its_capacity_holds_and_frees_the_oldest(capacity_mb, kept_blocks):
    env = _env(FUSEDKD_CPU_OUTPUT_CACHE_MB=capacity_mb, FUSEDKD_CPU_HUGE_PAGES="1")
    out = subprocess.run([sys.executable, "-c", EVICTION_PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    released, again = map(int, out.stdout.split())
    assert (released, again) == (kept_blocks * 4096 * 4096 * 4, 0)


def test_a_bad_cache_setting_is_a_clear_error():
    env = _env(FUSEDKD_CPU_OUTPUT_CACHE_MB="lots", FUSEDKD_CPU_HUGE_PAGES="1")
    probe = "import torch, fusedkd\nfusedkd.softmax_t(torch.randn(4096, 4096))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "FUSEDKD_CPU_OUTPUT_CACHE_MB must be a whole number of MiB" in out.stderr


def test_reused_blocks_hold_no_stale_values_and_release_frees_them():
    g = torch.Generator().manual_seed(11)
    s1, t1 = torch.randn(4096, 4096, generator=g).requires_grad_(), torch.randn(4096, 4096, generator=g)
    s2, t2 = torch.randn(4096, 4096, generator=g).requires_grad_(), torch.randn(4096, 4096, generator=g)
    labels = torch.randint(0, 4096, (4096,), generator=g)
    labels[::3] = -100  # ignored rows: their gradient is written as zeros, not left as it was

    def grad():
        return torch.autograd.grad(fusedkd.kd_loss(s2, t2, labels, temperature=2.0, hard_weight=0.5), [s2])[0]

    fusedkd.release_cpu_output_cache()
    expected = grad()  # a fresh block, kept alive below
    for _ in range(2):
        stale, = torch.autograd.grad(fusedkd.kd_loss(s1, t1, temperature=3.0), [s1])
        del stale  # the block goes to the cache, holding another call's values
        got = grad()
        assert torch.equal(got, expected)
        assert not got[::3].any()
        del got
    caching = os.environ.get("FUSEDKD_CPU_HUGE_PAGES") != "0" and os.environ.get("FUSEDKD_CPU_OUTPUT_CACHE_MB") != "0"
    assert fusedkd.release_cpu_output_cache() >= (4096 * 4096 * 4 if caching else 0)
    assert fusedkd.release_cpu_output_cache() == 0


def test_a_forked_child_uses_a_cache_of_its_own():
    s, t = torch.randn(4096, 4096, requires_grad=True), torch.randn(4096, 4096)
    torch.autograd.grad(fusedkd.kd_loss(s, t, temperature=2.0), [s])  # a block kept in the parent
    live, = torch.autograd.grad(fusedkd.kd_loss(s, t, temperature=2.0), [s])  # one in use at the fork
    pid = os.fork()
    if pid == 0:  # the child: frees the parent's block in use, makes and frees its own
        code = 1
        try:
            import signal

            signal.alarm(60)
            # As in a DataLoader worker: LibTorch's OpenMP threads do not survive a fork (torch's own
            # softmax hangs in such a child otherwise, on this project's VM).
            torch.set_num_threads(1)
            expected = live.clone()
            del live
            kept = fusedkd.release_cpu_output_cache()  # its own cache: nothing kept yet
            for _ in range(2):
                grad, = torch.autograd.grad(fusedkd.kd_loss(s, t, temperature=2.0), [s])
                assert torch.equal(grad, expected)
                del grad
            code = 0 if kept == 0 and fusedkd.release_cpu_output_cache() >= 4096 * 4096 * 4 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    del live
    assert fusedkd.release_cpu_output_cache() >= 4096 * 4096 * 4


# A gradient of 32 MiB and more is written with non-temporal stores (kernels/cpu/row_buffers.h:
# kStreamedOutputBytes): a bfloat16 one converted from a scratch row, a float32 one by the gradient
# sweep through a tile (also the float32 student of a float64 teacher, accumulated in double); rows
# of an odd length start at every alignment. Each row's gradient of a "sum" divergence depends on
# that row alone, so a small call (stored plainly) must give the same bits. Run under every
# instruction-set copy (each has its own streaming code).
STREAM_PROBE = """
import torch, fusedkd
g = torch.Generator().manual_seed(3)
R, V = 4100, 4099  # 33.6 MB of bfloat16: just above the 32 MiB threshold
for student, teacher in ((torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
                         (torch.float32, torch.float64)):
    s = (torch.randn(R, V, generator=g) * 3).to(student).requires_grad_()
    t = (torch.randn(R, V, generator=g) * 3).to(teacher)
    # the student's gradient alone (the forward KL keeps its numerators), then both
    for loss, t_grad in ((lambda s, t: fusedkd.kl_div(s, t, temperature=2.0, reduction="sum"), False),
                         (lambda s, t: fusedkd.jsd(s, t, temperature=2.0, reduction="sum"), student == torch.float32)):
        t.requires_grad_(t_grad)
        grads = torch.autograd.grad(loss(s, t), [x for x in (s, t) if x.requires_grad])
        for rows in (slice(0, 40), slice(2001, 2041), slice(R - 40, R)):
            parts = [x[rows].detach().requires_grad_(x.requires_grad) for x in (s, t)]
            expected = torch.autograd.grad(loss(*parts), [x for x in parts if x.requires_grad])
            for got, want in zip(grads, expected):
                assert got.dtype == want.dtype and torch.equal(got[rows], want), (student, teacher, rows)
        del grads
    labels = torch.randint(0, V, (R,), generator=g)
    labels[1::2] = -100
    grad, = torch.autograd.grad(fusedkd.kd_loss(s, t.detach(), labels, temperature=2.0, hard_weight=0.5), [s])
    assert not grad[1::2].any() and grad[0::2].abs().sum() > 0 and grad.isfinite().all()
"""


def test_streamed_large_gradients_match_plain_stores():
    for isa in ("baseline", "avx2", "avx512"):
        out = subprocess.run([sys.executable, "-c", STREAM_PROBE], env=_env(FUSEDKD_CPU_ISA=isa), capture_output=True,
                             text=True)
        assert out.returncode == 0, (isa, out.stderr[-2000:])

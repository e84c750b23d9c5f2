"""fusedkd against what a user would otherwise run, measured in one process on the same inputs:
the eager PyTorch composite, torch.compile of that composite, liger-kernel's losses where they
run (CUDA, when importable), and the machine's own ceiling (a copy of one [R x V] tensor).

    python bench/compare.py --device cpu --out out/compare_cpu.json [--quick] [--min-time S]

Every case is timed with torch.utils.benchmark (blocked_autorange, the median; warm-up calls
first, at least 3 and 1 s, so that neither compilation nor a fresh output's first huge pages
are timed; then --rounds rounds that time the case's implementations in turn, each keeping its
best median) for forward + backward (the gradient of the student, and of
the regressor for the FitNets hint) or forward alone under no_grad ("stats": the statistics sweep
of kd_loss); softmax_t and log_softmax_t alone, their backward with a given upstream gradient. The
floor of a case is its minimal traffic at the copy's bandwidth: 3X for a loss's forward + backward
(read student and teacher, write the student's gradient; X = R * V * element size), 5X for
softmax_t / log_softmax_t (read x, write y; read y and dy, write dx), 2X for a forward without
gradient. Peak extra memory: torch.cuda.max_memory_allocated above
what was allocated before the call, CUDA only (LibTorch's CPU allocator keeps no statistics).
scripts/bench_report.py turns the JSON into docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

# torch.compile in this process, its compilation in this process too: Inductor's pool of compile
# workers (subprocesses) stays busy after a compile and took CPU from the timed calls on a 2-core
# machine (measured: fusedkd's softmax_t at 8192 x 1000 timed 3.8 ms after a compile, 2.4 ms with
# this set; the compiled composite's own times moved as well). Compilation is never timed.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

import fusedkd

T = 2.0  # the temperature of every soft-target case


# ------------------------------------------------------------------ the composites users write


def kd_composite(s, t, y):  # the seed's loss: CE + soft_weight * KL(teacher || student) at T
    ls, lt = F.log_softmax(s.float() / T, -1), F.log_softmax(t.float() / T, -1)
    return F.cross_entropy(s.float(), y) + 0.5 * F.kl_div(ls, lt, reduction="batchmean", log_target=True)


def kl_composite(s, t, y):
    return F.kl_div(F.log_softmax(s.float() / T, -1), F.log_softmax(t.float() / T, -1), reduction="batchmean",
                    log_target=True)


def jsd_composite(s, t, y):  # beta = 0.5, log m in log space
    lq, lp = F.log_softmax(s.float() / T, -1), F.log_softmax(t.float() / T, -1)
    lm = torch.logaddexp(lq, lp) - math.log(2.0)
    return 0.5 * (F.kl_div(lm, lp, reduction="batchmean", log_target=True)
                  + F.kl_div(lm, lq, reduction="batchmean", log_target=True))


def soft_mse_composite(s, t, y):
    return F.mse_loss(F.softmax(s.float() / T, -1), F.softmax(t.float() / T, -1))


def softmax_composite(s, t, y):
    return torch.softmax(s / T, -1)


def log_softmax_composite(s, t, y):
    return torch.log_softmax(s / T, -1)


def at_map(x):
    return F.normalize(x.float().pow(2).mean(1).flatten(1), dim=1)


SOFT = {  # name: (fusedkd, composite, liger or None)
    "kd_loss": (lambda s, t, y: fusedkd.kd_loss(s, t, y, temperature=T, soft_weight=0.5, hard_weight=1.0),
                kd_composite, None),
    "kl_div": (lambda s, t, y: fusedkd.kl_div(s, t, temperature=T), kl_composite, "kl_div"),
    "jsd": (lambda s, t, y: fusedkd.jsd(s, t, temperature=T, beta=0.5), jsd_composite, "jsd"),
    "soft_mse": (lambda s, t, y: fusedkd.soft_mse(s, t, temperature=T), soft_mse_composite, None),
    # The op alone, its backward with the teacher's tensor as the upstream gradient.
    "softmax_t": (lambda s, t, y: fusedkd.softmax_t(s, temperature=T), softmax_composite, None),
    "log_softmax_t": (lambda s, t, y: fusedkd.log_softmax_t(s, temperature=T), log_softmax_composite, None),
}
ELEMENTWISE = {"softmax_t", "log_softmax_t"}  # outputs [R x V]: traffic 5X (x, y; then y, dy, dx)
FEATURE = {  # name: (fusedkd, composite) of (student, teacher, regressor weight)
    "feature_mse": (lambda s, t, w: fusedkd.feature_mse(s, t), lambda s, t, w: F.mse_loss(s, t)),
    "attention_transfer": (lambda s, t, w: fusedkd.attention_transfer(s, t),
                           lambda s, t, w: (at_map(s) - at_map(t)).pow(2).mean()),
    "projected_feature_mse": (lambda s, t, w: fusedkd.projected_feature_mse(s, w, None, t),
                              lambda s, t, w: F.mse_loss(F.conv2d(s, w[:, :, None, None]), t)),
    "similarity_preserving": (
        lambda s, t, w: fusedkd.similarity_preserving(s, t),
        lambda s, t, w: (F.normalize(s.flatten(1) @ s.flatten(1).T, dim=1)
                         - F.normalize(t.flatten(1) @ t.flatten(1).T, dim=1)).pow(2).sum() / s.shape[0] ** 2),
}


def liger(name):
    """liger-kernel's loss on log-probabilities (it takes log q, log p), or None without it."""
    try:
        if name == "kl_div":
            from liger_kernel.transformers import LigerKLDIVLoss

            loss = LigerKLDIVLoss(reduction="batchmean", log_target=True)
        else:
            from liger_kernel.transformers import LigerJSD

            loss = LigerJSD(beta=0.5)
    except Exception:  # noqa: BLE001  (not installed, or no Triton for this device)
        return None
    return lambda s, t, y: loss(F.log_softmax(s.float() / T, -1), F.log_softmax(t.float() / T, -1))


# ------------------------------------------------------------------ the cases


def soft_cases(device, quick):
    if device == "cpu":
        big = [(4096, 32000)] if not quick else [(256, 32000)]
        shapes = {"kd_loss": big + [(8192, 1000), (65536, 10)], "stats": big}
        for op in ("kl_div", "jsd", "soft_mse", "softmax_t", "log_softmax_t"):
            shapes[op] = [(1024, 32000) if not quick else (64, 32000), (8192, 1000), (65536, 10)]
    else:  # LLM shapes; each (op, shape, dtype) is a torch.compile of its own (tens of seconds on a GPU)
        llm = [(8192, 32000), (16384, 131072)] if not quick else [(1024, 32000)]
        shapes = {op: llm for op in SOFT}
        shapes["stats"] = llm
    if quick:
        shapes = {op: [(min(r, 512), v) for r, v in s] for op, s in shapes.items()}
    return shapes


def random_inputs(shape, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    s = (torch.randn(shape, generator=g, device=device) * 3).to(dtype).requires_grad_()
    t = (torch.randn(shape, generator=g, device=device) * 3).to(dtype)
    y = torch.randint(0, shape[-1], shape[:-1], generator=g, device=device)
    return s, t, y


WARMUP_CALLS = 3
WARMUP_SECONDS = 1.0


def warm_up(fn):
    # Untimed: compilation, and the first calls whose large CPU outputs wait for the kernel to
    # compact memory into huge pages (docs/architecture.md: a 0.1-0.5 GB output costs 100-600 ms
    # on each of its first few calls, a few ms once the freed huge pages are reused).
    start = time.perf_counter()
    calls = 0
    while calls < WARMUP_CALLS or time.perf_counter() - start < WARMUP_SECONDS:
        fn()
        calls += 1


def timed_ms(fn, threads, min_time):
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_time).median * 1e3


def median_ms(fn, threads, min_time):
    warm_up(fn)
    return timed_ms(fn, threads, min_time)


def best_of_rounds_ms(fns, threads, min_time, rounds):
    """{impl: ms, or the exception it raised} for [(impl, fn)]: each warmed up, then `rounds` rounds
    that time every implementation in turn, each implementation's best median kept. A slow spell of
    a shared VM then lands in one round of one implementation, not in the case's result, and the
    implementations of a case are timed in interleaved windows rather than one after the other.
    (What moved kl_div float32 65536 x 10 from 1.25 ms alone to 1.8-1.9 ms in whole runs on
    2026-12-02 was not such a spell: fusedkd's short rows run slower in a process that has run its
    forward-KL long rows, reproduced outside this script; issue 15's note.)"""
    out = {}
    for impl, fn in fns:
        try:
            warm_up(fn)
            out[impl] = math.inf
        except Exception as e:  # noqa: BLE001  (a peer or the compiler failing is a result too)
            out[impl] = e
    for _ in range(rounds):
        for impl, fn in fns:
            if isinstance(out[impl], float):
                try:
                    out[impl] = min(out[impl], timed_ms(fn, threads, min_time))
                except Exception as e:  # noqa: BLE001
                    out[impl] = e
    return out


def peak_extra_mb(fn, device):
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 1e6


def copy_gbs(shape, dtype, device, threads, min_time):
    """The machine's ceiling: bytes read + written per second by a copy of one [R x V] tensor into
    a tensor already written once (no first-touch faults), the same threads; the best of three
    timings (each a median), since a ceiling is what the machine can do, and a slow spell of a
    shared VM only lowers it (one such spell put a float32 softmax_t case at 114% of its floor)."""
    x = torch.ones(shape, dtype=dtype, device=device)
    z = torch.zeros_like(x)
    ms = min(median_ms(lambda: z.copy_(x), threads, min_time) for _ in range(3))
    return 2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run of the script)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per case")
    parser.add_argument("--ops", default="", help="comma-separated subset of ops")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of timings per case, the implementations in turn; the best median kept")
    args = parser.parse_args()
    device, threads = args.device, torch.get_num_threads()
    selected = set(filter(None, args.ops.split(",")))
    results, ceilings = [], {}
    compiled_cache = {}

    def save():  # after every case: a run cut short (a device's time limit) keeps what it measured
        out = dict(machine=machine_info(device, threads),
                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   command=" ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), temperature=T,
                   rounds=args.rounds, results=results)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)

    def record(op, phase, dtype, shape, fns, floor_bytes, teacher_shape=None):
        """Times the implementations [(impl, fn)] of one case (best_of_rounds_ms) and records each."""
        key = (tuple(shape), str(dtype))
        if key not in ceilings:
            ceilings[key] = copy_gbs(shape, dtype, device, threads, args.min_time)
        timed = best_of_rounds_ms(fns, threads, args.min_time, args.rounds)
        floor_ms = floor_bytes / (ceilings[key] * 1e9) * 1e3
        for impl, fn in fns:
            ms, mb, error = timed[impl], None, None
            if isinstance(ms, float):
                try:
                    mb = peak_extra_mb(fn, device)
                except Exception as e:  # noqa: BLE001
                    ms = e
            if not isinstance(ms, float):
                ms, error = None, f"{type(ms).__name__}: {str(ms).splitlines()[0][:200] if str(ms) else ''}"
            results.append(dict(op=op, phase=phase, device=device, dtype=str(dtype).replace("torch.", ""),
                                shape=list(shape), impl=impl, ms=ms, peak_extra_mb=mb, floor_ms=floor_ms,
                                copy_gbs=ceilings[key], error=error,
                                **({"teacher_shape": list(teacher_shape)} if teacher_shape is not None else {})))
            shown = f"{ms:9.3f} ms" if ms is not None else error
            print(f"{op:22s} {phase:8s} {str(dtype):15s} {str(tuple(shape)):18s} {impl:10s} {shown}", flush=True)
        save()

    def compiled(name, fn):
        if name not in compiled_cache:
            compiled_cache[name] = torch.compile(fn, dynamic=False)
        return compiled_cache[name]

    shapes = soft_cases(device, args.quick)
    for op, (ours, composite, peer) in SOFT.items():
        if selected and op not in selected:
            continue
        for dtype in (torch.float32, torch.bfloat16):
            for shape in shapes[op]:
                if device == "cpu" and dtype == torch.bfloat16 and shape[-1] == 32000 and op != "kd_loss":
                    continue  # the large bf16 CPU case: kd_loss alone
                s, t, y = random_inputs(shape, dtype, device)
                x_bytes = s.numel() * s.element_size()

                upstream = t if op in ELEMENTWISE else None

                def step(f):
                    return lambda: torch.autograd.grad(f(s, t, y), [s], upstream)

                impls = [("fusedkd", ours), ("eager", composite)]
                if not args.no_compile:
                    impls.append(("compiled", compiled(f"{op}", composite)))
                if device == "cuda" and peer and liger(peer) is not None:
                    impls.append(("liger", liger(peer)))
                record(op, "fwd+bwd", dtype, shape, [(impl, step(f)) for impl, f in impls],
                       (5 if op in ELEMENTWISE else 3) * x_bytes)
                if op == "kd_loss" and shape in shapes["stats"]:
                    def nograd(f):
                        def run():
                            with torch.no_grad():
                                f(s, t, y)
                        return run
                    record(op, "stats", dtype, shape, [(impl, nograd(f)) for impl, f in impls], 2 * x_bytes)
                del s, t, y

    feature_shapes = [(128, 64, 56, 56), (128, 256, 14, 14)] if not args.quick else [(8, 16, 14, 14)]
    for op, (ours, composite) in FEATURE.items():
        if selected and op not in selected:
            continue
        for shape in feature_shapes:
            g = torch.Generator(device=device).manual_seed(1)
            s = torch.randn(shape, generator=g, device=device).requires_grad_()
            teacher_channels = shape[1] if op == "feature_mse" else 2 * shape[1]  # the others: a wider teacher
            t = torch.randn((shape[0], teacher_channels) + shape[2:], generator=g, device=device)
            w = (torch.randn(2 * shape[1], shape[1], generator=g, device=device) * 0.1).requires_grad_()
            leaves = [s, w] if op == "projected_feature_mse" else [s]
            impls = [("fusedkd", ours), ("eager", composite)]
            if not args.no_compile:
                impls.append(("compiled", compiled(op, composite)))
            record(op, "fwd+bwd", torch.float32, shape,
                   [(impl, lambda f=f: torch.autograd.grad(f(s, t, w), leaves)) for impl, f in impls],
                   3 * s.numel() * s.element_size(), teacher_shape=t.shape)

    save()
    print(f"wrote {args.out}")


def machine_info(device, threads):
    machine = dict(platform=platform.platform(), processor=cpu_name(), cpus=os.cpu_count(), threads=threads,
                   torch=torch.__version__, fusedkd=fusedkd.__version__, python=sys.version.split()[0],
                   device=torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
                   huge_pages=os.environ.get("FUSEDKD_CPU_HUGE_PAGES", "1") != "0",
                   output_cache_mb=(int(os.environ.get("FUSEDKD_CPU_OUTPUT_CACHE_MB") or 1024)
                                    if os.environ.get("FUSEDKD_CPU_HUGE_PAGES", "1") != "0" else 0),
                   openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"))
    try:
        from importlib.metadata import version

        machine["liger_kernel"] = version("liger-kernel")
    except Exception:  # noqa: BLE001  (not installed)
        machine["liger_kernel"] = None
    return machine


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()

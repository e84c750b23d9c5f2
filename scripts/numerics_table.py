"""Measures every op's error against float64 next to its PyTorch composite's, on the same inputs,
and prints the Markdown table docs/numerics.md shows. Usage (after scripts/build.sh):
    FUSEDKD_TORCH_LIBRARY=build/torch_ext/libfusedkd_torch.so PYTHONPATH=python \\
        .venv/bin/python scripts/numerics_table.py
Errors are relative norms ||x - x64|| / ||x64|| of the value and of the first input's gradient
(upstream gradient: random normal for elementwise outputs, 1 for scalar losses), the median and
the maximum over the seeds, for fusedkd and for the composite evaluated in the input's dtype."""
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

import fusedkd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python" / "tests"))
from randomized_soft import kd_soft_composite  # noqa: E402  (the composites the tests use)

SEEDS = range(8)


def rows(kind, shape, g):
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    if kind == "peaked":  # a few logits 10..30 above the rest in every row
        for r in range(x.shape[0]):
            x[r, torch.randint(0, x.shape[1], (20,), generator=g)] += 10 + 20 * torch.rand(20, generator=g, dtype=torch.float64)
    return x


def cases():
    for kind, shape in [("normal", (64, 1000)), ("peaked", (2, 70001))]:
        for T in (1.0,) if kind == "normal" else (1.0,):
            yield (f"softmax_t, {kind} {shape[0]}x{shape[1]}, T={T}", kind, shape,
                   lambda x, t, T=T: fusedkd.softmax_t(x, T), lambda x, t, T=T: torch.softmax(x / T, -1), False)
            yield (f"log_softmax_t, {kind} {shape[0]}x{shape[1]}, T={T}", kind, shape,
                   lambda x, t, T=T: fusedkd.log_softmax_t(x, T), lambda x, t, T=T: torch.log_softmax(x / T, -1), False)
        for divergence in ("kl", "reverse_kl", "jsd", "mse"):
            for T in (0.3, 4.0):
                yield (f"kd_loss {divergence}, {kind} {shape[0]}x{shape[1]}, T={T}", kind, shape,
                       lambda s, t, d=divergence, T=T: fusedkd.kd_loss(s, t, temperature=T, divergence=d),
                       kd_soft_composite(divergence, T), True)
    yield ("feature_mse, 8x64x28x28", "normal", (8 * 64, 784),
           lambda s, t: fusedkd.feature_mse(s, t), lambda s, t: F.mse_loss(s, t), True)


def measure(dtype):
    out = []
    for name, kind, shape, ours, composite, scalar in cases():
        errs = {k: [] for k in ("of", "og", "cf", "cg")}
        for seed in SEEDS:
            g = torch.Generator().manual_seed(seed)
            x = rows(kind, shape, g).to(dtype)
            t = rows(kind, shape, g).to(dtype)
            up = torch.ones((), dtype=torch.float64) if scalar else torch.randn(*shape, generator=g, dtype=torch.float64)

            def run(f, x, t):
                x = x.clone().requires_grad_()
                y = f(x, t)
                (gx,) = torch.autograd.grad(y, x, up.to(y.dtype))
                return y, gx

            y64, g64 = run(composite, x.double(), t.double())
            yo, go = run(ours, x, t)
            yc, gc = run(composite, x, t)
            rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()
            errs["of"].append(rel(yo, y64)); errs["og"].append(rel(go, g64))
            errs["cf"].append(rel(yc, y64)); errs["cg"].append(rel(gc, g64))
        out.append((name, {k: (statistics.median(v), max(v)) for k, v in errs.items()}))
    return out


def main():
    print(f"Measured {date.today()} on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, seeds {SEEDS.start}..{SEEDS.stop - 1}, `{' '.join(sys.argv)}`.\n")
    for dtype in (torch.float32, torch.bfloat16):
        print(f"**{str(dtype).replace('torch.', '')}** (median / max relative error)\n")
        print("| case | fusedkd value | composite value | fusedkd gradient | composite gradient |")
        print("|---|---|---|---|---|")
        for name, e in measure(dtype):
            f = lambda p: f"{p[0]:.1e} / {p[1]:.1e}"
            print(f"| {name} | {f(e['of'])} | {f(e['cf'])} | {f(e['og'])} | {f(e['cg'])} |")
        print()


if __name__ == "__main__":
    main()

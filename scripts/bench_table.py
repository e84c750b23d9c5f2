#!/usr/bin/env python3
"""Google Benchmark JSON (bench_softmax, bench_soft_target, bench_feature) -> Markdown tables: each
fusedkd case beside the LibTorch composite it replaces, with GB/s over the minimal traffic and the
speedup; then any fusedkd variant (a kernel forced by policy) beside the default fusedkd run.

    bench_table.py RESULTS.json [--copy-gbs GBS]

--copy-gbs: the device's measured copy bandwidth (bytes read + written per second, in GB/s);
fusedkd's GB/s is then also given as a share of it. Where the runs carry the `extra_per_grad`
counter (CUDA soft-target cases: peak memory a fwd+bwd allocates, in [R x V] gradient buffers),
it is printed for fusedkd and for the composite."""
import argparse
import json


def microseconds(run):
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[run.get("time_unit", "ns")]
    return run["real_time"] * scale


def gbs(run):
    return run.get("bytes_per_second", 0) / 1e9


def main(path, copy_gbs=None):
    print(tables(path, copy_gbs))


def tables(path, copy_gbs=None):
    """The Markdown tables of one Google Benchmark JSON file, as a string."""
    lines = []
    out = lines.append
    with open(path) as f:
        text = f.read()
    if not text.strip():
        return f"{path}: no benchmark results"
    data = json.loads(text)
    # With --benchmark_repetitions the median of the repetitions is used, else the single run.
    runs = {}
    for b in data["benchmarks"]:
        kind = b.get("run_type", "iteration")
        if kind == "aggregate" and b.get("aggregate_name") != "median":
            continue
        op, phase, impl, device, dtype, shape = b.get("run_name", b["name"]).split("/")[:6]
        key = (op, phase, device, dtype, shape, impl)
        if kind == "aggregate" or key not in runs:
            runs[key] = b
    ctx = data.get("context", {})
    out(f"Host: {ctx.get('host_name', '?')}, {ctx.get('num_cpus', '?')} CPUs, "
          f"torch {ctx.get('torch', '?')} ({ctx.get('torch_threads', '?')} threads), "
          f"CUDA device: {ctx.get('cuda_device', '?')}, date {ctx.get('date', '?')}\n")
    memory = any("extra_per_grad" in r for r in runs.values())
    head = "| op | pass | device | dtype | shape | fusedkd (us) | GB/s |"
    rule = "|---|---|---|---|---|---:|---:|"
    if copy_gbs:
        head, rule = head + f" % of copy ({copy_gbs:.0f} GB/s) |", rule + "---:|"
    head, rule = head + " composite (us) | GB/s | speedup |", rule + "---:|---:|---:|"
    if memory:
        head, rule = head + " extra memory, fusedkd (x grad) | composite (x grad) |", rule + "---:|---:|"
    out(head)
    out(rule)
    for key in sorted(k for k in runs if k[-1] == "fusedkd"):
        ours = runs[key]
        other = runs.get(key[:-1] + ("composite",))
        if other is None:
            continue
        t_ours, t_other = microseconds(ours), microseconds(other)
        op, phase, device, dtype, shape, _ = key
        line = f"| {op} | {phase} | {device} | {dtype} | {shape} | {t_ours:.1f} | {gbs(ours):.1f} |"
        if copy_gbs:
            line += f" {100 * gbs(ours) / copy_gbs:.0f}% |" if device == "cuda" else " |"
        line += f" {t_other:.1f} | {gbs(other):.1f} | {t_other / t_ours:.2f}x |"
        if memory:
            line += "".join(f" {r['extra_per_grad']:.2f} |" if "extra_per_grad" in r else " |" for r in (ours, other))
        out(line)
    # Variants of fusedkd itself (impl "fusedkd-<variant>", e.g. a kernel forced by policy) beside
    # the default fusedkd run of the same case.
    variants = sorted(k for k in runs if k[-1].startswith("fusedkd-") and k[:-1] + ("fusedkd",) in runs)
    if variants:
        out("\n| op | pass | device | dtype | shape | variant | variant (us) | GB/s | fusedkd (us) | GB/s | fusedkd speedup |")
        out("|---|---|---|---|---|---|---:|---:|---:|---:|---:|")
        for key in variants:
            var, ours = runs[key], runs[key[:-1] + ("fusedkd",)]
            t_var, t_ours = microseconds(var), microseconds(ours)
            op, phase, device, dtype, shape, impl = key
            out(f"| {op} | {phase} | {device} | {dtype} | {shape} | {impl[len('fusedkd-'):]} | {t_var:.1f} | "
                  f"{gbs(var):.1f} | {t_ours:.1f} | {gbs(ours):.1f} | {t_var / t_ours:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--copy-gbs", type=float, default=None)
    args = parser.parse_args()
    main(args.results, args.copy_gbs)

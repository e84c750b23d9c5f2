#!/usr/bin/env python3
"""Google Benchmark JSON (bench_softmax, bench_soft_target, bench_feature) -> Markdown tables: each
fusedkd case beside the LibTorch composite it replaces, with GB/s over the minimal traffic and the
speedup; then any fusedkd variant (a kernel forced by policy) beside the default fusedkd run."""
import json
import sys


def microseconds(run):
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[run.get("time_unit", "ns")]
    return run["real_time"] * scale


def gbs(run):
    return run.get("bytes_per_second", 0) / 1e9


def main(path):
    with open(path) as f:
        text = f.read()
    if not text.strip():
        print(f"{path}: no benchmark results")
        return
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
    print(f"Host: {ctx.get('host_name', '?')}, {ctx.get('num_cpus', '?')} CPUs, "
          f"torch {ctx.get('torch', '?')} ({ctx.get('torch_threads', '?')} threads), "
          f"CUDA device: {ctx.get('cuda_device', '?')}, date {ctx.get('date', '?')}\n")
    print("| op | pass | device | dtype | shape | fusedkd (us) | GB/s | composite (us) | GB/s | speedup |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|")
    for key in sorted(k for k in runs if k[-1] == "fusedkd"):
        ours = runs[key]
        other = runs.get(key[:-1] + ("composite",))
        if other is None:
            continue
        t_ours, t_other = microseconds(ours), microseconds(other)
        op, phase, device, dtype, shape, _ = key
        print(f"| {op} | {phase} | {device} | {dtype} | {shape} | {t_ours:.1f} | {gbs(ours):.1f} | "
              f"{t_other:.1f} | {gbs(other):.1f} | {t_other / t_ours:.2f}x |")
    # Variants of fusedkd itself (impl "fusedkd-<variant>", e.g. a kernel forced by policy) beside
    # the default fusedkd run of the same case.
    variants = sorted(k for k in runs if k[-1].startswith("fusedkd-") and k[:-1] + ("fusedkd",) in runs)
    if variants:
        print("\n| op | pass | device | dtype | shape | variant | variant (us) | GB/s | fusedkd (us) | GB/s | fusedkd speedup |")
        print("|---|---|---|---|---|---|---:|---:|---:|---:|---:|")
        for key in variants:
            var, ours = runs[key], runs[key[:-1] + ("fusedkd",)]
            t_var, t_ours = microseconds(var), microseconds(ours)
            op, phase, device, dtype, shape, impl = key
            print(f"| {op} | {phase} | {device} | {dtype} | {shape} | {impl[len('fusedkd-'):]} | {t_var:.1f} | "
                  f"{gbs(var):.1f} | {t_ours:.1f} | {gbs(ours):.1f} | {t_var / t_ours:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1])

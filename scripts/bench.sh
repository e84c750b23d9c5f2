#!/usr/bin/env bash
# The benchmarks: setup, build, run bench_softmax (JSON into out/), print the comparison table.
# Extra arguments go to the benchmark binary (e.g. --benchmark_filter=cpu/float).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/build.sh"
BUILD="${FUSEDKD_BUILD_DIR:-$ROOT/build}"
mkdir -p "$ROOT/out"
"$BUILD/bench/bench_softmax" --benchmark_min_time=0.2 --benchmark_out="$ROOT/out/bench_softmax.json" \
  --benchmark_out_format=json "$@"
"$ROOT/.venv/bin/python" "$ROOT/scripts/bench_table.py" "$ROOT/out/bench_softmax.json" | tee "$ROOT/out/bench_softmax.md"

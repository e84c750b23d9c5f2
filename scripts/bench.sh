#!/usr/bin/env bash
# The benchmarks: setup, build, run bench_soft_target, bench_softmax and bench_feature (JSON into out/), print
# the comparison tables.
# Extra arguments go to the benchmark binary (e.g. --benchmark_filter=cpu/float).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/build.sh"
BUILD="${FUSEDKD_BUILD_DIR:-$ROOT/build}"
mkdir -p "$ROOT/out"
for bench in bench_soft_target bench_softmax bench_feature; do
  "$BUILD/bench/$bench" --benchmark_min_time=0.2 --benchmark_out="$ROOT/out/$bench.json" \
    --benchmark_out_format=json "$@"
  "$ROOT/.venv/bin/python" "$ROOT/scripts/bench_table.py" "$ROOT/out/$bench.json" | tee "$ROOT/out/$bench.md"
done

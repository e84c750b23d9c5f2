#!/usr/bin/env bash
# One benchmark run, one report: setup, build, then in the same run the C++ benchmarks (Google
# Benchmark: bench_soft_target, bench_softmax, bench_feature; JSON into out/) and the Python
# comparison (bench/compare.py: fusedkd, the eager composite, torch.compile of it, the copy
# ceiling; out/compare_cpu.json), and docs/benchmarks.md generated from those JSON files
# (scripts/bench_report.py). About 15 minutes on this project's 2-core VM (14 min 35 s with 3
# rounds of timings per case, 2026-12-02).
#   scripts/bench.sh             everything
#   scripts/bench.sh --quick     small shapes, short timings: a smoke run (report into out/, not docs/)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/build.sh"
BUILD="${FUSEDKD_BUILD_DIR:-$ROOT/build}"
PY="$ROOT/.venv/bin/python"
OUT="$ROOT/out"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT/python" FUSEDKD_TORCH_LIBRARY="$BUILD/torch_ext/libfusedkd_torch.so"
quick=0
[ "${1:-}" = "--quick" ] && quick=1
gbench=()
for bench in bench_soft_target bench_softmax bench_feature; do
  if [ $quick = 1 ]; then
    "$BUILD/bench/$bench" --benchmark_filter='R256|R8192xV10|x14' --benchmark_min_time=0.05 \
      --benchmark_out="$OUT/$bench.json" --benchmark_out_format=json > /dev/null
  else
    "$BUILD/bench/$bench" --benchmark_min_time=0.2 --benchmark_repetitions=3 \
      --benchmark_out="$OUT/$bench.json" --benchmark_out_format=json
  fi
  gbench+=("$OUT/$bench.json")
done
if [ $quick = 1 ]; then
  "$PY" "$ROOT/bench/compare.py" --device cpu --quick --min-time 0.05 --out "$OUT/compare_cpu.json"
  report="$OUT/benchmarks.md"
else
  "$PY" "$ROOT/bench/compare.py" --device cpu --min-time 0.5 --out "$OUT/compare_cpu.json"
  report="$ROOT/docs/benchmarks.md"
fi
compare=("$OUT/compare_cpu.json")
# A GPU run's comparison (scripts/gpu_check.sh), when one has been copied here.
[ -f "$ROOT/docs/gpu/compare_cuda.json" ] && compare+=("$ROOT/docs/gpu/compare_cuda.json")
"$PY" "$ROOT/scripts/bench_report.py" --compare "${compare[@]}" --gbench "${gbench[@]}" \
  --command "scripts/bench.sh${*:+ $*}" --out "$report"

#!/usr/bin/env bash
# The one command for a GPU machine.
#
#   scripts/gpu_check.sh OUT_DIR [DEPS_DIR]
#
# Builds fusedkd against that machine's own PyTorch (python3's torch; the project's .venv is not
# assumed), runs every test including the CUDA ones, runs compute-sanitizer (memcheck, racecheck)
# on the CUDA kernel tests, runs the benchmarks, and writes logs, JSON and summary.md to OUT_DIR.
# No network: DEPS_DIR (default .gpu-deps, made by scripts/prepare_gpu_deps.sh) holds GoogleTest's
# sources, Google Benchmark, OpenBLAS (used when the machine has none) and the Fashion-MNIST files. OUT_DIR gets few files (a device
# machine may return only a handful): summary.md, the benchmark JSON, and logs.tar.gz with every
# log and the per-test JSON.
#
# Status: NOT YET RUN ON A GPU. Until a run's results are recorded in docs/, the CUDA kernels are
# compiled (sm_80, sm_90, no spills), not verified.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(mkdir -p "${1:?usage: gpu_check.sh OUT_DIR [DEPS_DIR]}" && cd "$1" && pwd)
DEPS=$(cd "${2:-$ROOT/.gpu-deps}" && pwd)
PYTHON="${PYTHON:-python3}"
BUILD=/tmp/fusedkd-gpu-build
LOG=$(mktemp -d)/logs
mkdir -p "$LOG"
JOBS=$(nproc)
status=0
step() { echo "== $*" | tee -a "$OUT/summary.md"; }
record() {  # record NAME EXIT_CODE
  echo "- $1: $([ "$2" -eq 0 ] && echo ok || echo "FAILED ($2)")" | tee -a "$OUT/summary.md"
  [ "$2" -eq 0 ] || status=1
}

: > "$OUT/summary.md"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } 2>&1 | tee -a "$OUT/summary.md"

step "GoogleTest from source"
cmake -S "$DEPS/googletest" -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX=/tmp/gtest-prefix -DBUILD_GMOCK=OFF > "$LOG/gtest_build.log" 2>&1 &&
  cmake --build /tmp/gtest-build -j "$JOBS" >> "$LOG/gtest_build.log" 2>&1 &&
  cmake --install /tmp/gtest-build >> "$LOG/gtest_build.log" 2>&1
record "googletest build" $?

step "configure + build"
torch_prefix=$("$PYTHON" -c "import torch; print(torch.utils.cmake_prefix_path)")
bench_prefix="$DEPS/benchmark/usr;$DEPS/benchmark/usr/lib/x86_64-linux-gnu/cmake"
blas=()
if [ ! -e /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] && [ ! -e /usr/include/cblas.h ]; then
  blas_root="$DEPS/openblas/usr"
  blas=(-DFUSEDKD_CBLAS_INCLUDE_DIR="$blas_root/include/x86_64-linux-gnu/openblas-pthread"
        -DFUSEDKD_CBLAS_LIBRARY="$blas_root/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so")
  export LD_LIBRARY_PATH="$blas_root/lib/x86_64-linux-gnu/openblas-pthread:$blas_root/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFUSEDKD_CUDA=ON "${blas[@]}" \
  -DCMAKE_PREFIX_PATH="$torch_prefix;/tmp/gtest-prefix;$bench_prefix" > "$LOG/build.log" 2>&1 &&
  cmake --build "$BUILD" -j "$JOBS" >> "$LOG/build.log" 2>&1
record "build (sm_80;sm_90)" $?

step "tests"
(cd "$BUILD" && ctest --output-on-failure -j 8 > "$LOG/ctest.log" 2>&1)
record "ctest" $?
tail -n 3 "$LOG/ctest.log" >> "$OUT/summary.md"
"$BUILD/tests/test_softmax_kernels" --gtest_filter='*Cuda*' --gtest_output=json:"$LOG/kernels_cuda.json" > /dev/null 2>&1
"$BUILD/tests/test_softmax_ops" --gtest_filter='*cuda*' --gtest_output=json:"$LOG/ops_cuda.json" > /dev/null 2>&1
"$BUILD/tests/test_soft_target_kernels" --gtest_filter='*Cuda*' --gtest_output=json:"$LOG/soft_target_kernels_cuda.json" > /dev/null 2>&1
"$BUILD/tests/test_soft_target_ops" --gtest_filter='*cuda*' --gtest_output=json:"$LOG/soft_target_ops_cuda.json" > /dev/null 2>&1
"$BUILD/tests/test_feature_kernels" --gtest_filter='*Cuda*' --gtest_output=json:"$LOG/feature_kernels_cuda.json" > /dev/null 2>&1
"$BUILD/tests/test_feature_ops" --gtest_filter='*cuda*' --gtest_output=json:"$LOG/feature_ops_cuda.json" > /dev/null 2>&1
FUSEDKD_TORCH_LIBRARY="$BUILD/torch_ext/libfusedkd_torch.so" "$PYTHON" -m pytest -q "$ROOT/python/tests" > "$LOG/pytest.log" 2>&1
record "pytest" $?

step "compute-sanitizer"
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 1 "$BUILD/tests/test_softmax_kernels" \
    --gtest_filter='*Cuda*R5_V3*:*Cuda*V1031*:*Cuda*V5000*:*Cuda*V20000*' > "$LOG/sanitizer_${tool}_softmax.log" 2>&1
  record "compute-sanitizer $tool (softmax)" $?
  compute-sanitizer --tool "$tool" --error-exitcode 1 "$BUILD/tests/test_soft_target_kernels" \
    --gtest_filter='*Cuda_float32_float32*:*Cuda_bfloat16_float32*' > "$LOG/sanitizer_${tool}_soft_target.log" 2>&1
  record "compute-sanitizer $tool (soft targets)" $?
  compute-sanitizer --tool "$tool" --error-exitcode 1 "$BUILD/tests/test_feature_kernels" \
    --gtest_filter='*Cuda*' > "$LOG/sanitizer_${tool}_feature.log" 2>&1
  record "compute-sanitizer $tool (feature maps)" $?
done

step "benchmarks"
for bench in bench_soft_target bench_softmax bench_feature; do
  "$BUILD/bench/$bench" --benchmark_filter=cuda --benchmark_min_time=0.2 \
    --benchmark_out="$OUT/$bench.json" --benchmark_out_format=json > "$LOG/$bench.log" 2>&1
  record "$bench" $?
  "$PYTHON" "$ROOT/scripts/bench_table.py" "$OUT/$bench.json" >> "$OUT/summary.md" 2>&1
done
# Measured copy bandwidth: the yardstick for the kernels' bytes/s.
"$PYTHON" - >> "$OUT/summary.md" 2>&1 <<'PY'
import torch
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record(); [y.copy_(x) for _ in range(20)]; e.record(); torch.cuda.synchronize()
print(f"device-to-device copy: {2 * 20 * x.numel() / (s.elapsed_time(e) / 1e3) / 1e9:.0f} GB/s (read + write)")
PY
tar czf "$OUT/logs.tar.gz" -C "$(dirname "$LOG")" logs
exit $status

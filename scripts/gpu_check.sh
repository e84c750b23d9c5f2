#!/usr/bin/env bash
# The one command for a GPU machine.
#
#   scripts/gpu_check.sh OUT_DIR [DEPS_DIR]
#
# Builds fusedkd against that machine's own PyTorch (python3's torch; the project's .venv is not
# assumed), runs every test including the CUDA ones, runs compute-sanitizer (memcheck, racecheck)
# on the CUDA kernel tests, runs the benchmarks, and writes logs, JSON and summary.md to OUT_DIR.
# No network: DEPS_DIR (default .gpu-deps, made by scripts/prepare_gpu_deps.sh) holds GoogleTest's
# sources, Google Benchmark, OpenBLAS (used when the machine has none), zlib's headers (likewise) and
# the Fashion-MNIST files (for the demo and its tests).
#
# Device time is scarce (a lent machine's session has minutes, not hours), so:
#   - the CUDA code is built for the GPU in the machine alone (its compute capability, e.g. 90),
#     unless FUSEDKD_GPU_ARCHS says otherwise;
#   - the steps run most valuable first (CUDA tests, CUDA benchmarks of the soft-target losses,
#     compute-sanitizer, the other benchmarks, the whole suite), each under `timeout` within
#     GPU_CHECK_BUDGET seconds from the start (default 540); a step that would start with less
#     than a minute left is skipped and says so;
#   - OUT_DIR always holds what has been done so far: summary.md (a line per step, with its
#     seconds), the benchmark JSON, and logs.tar.gz with every log and per-test JSON, refreshed
#     after each step (a device machine may return only a handful of files, and a run killed at
#     its limit still returns what is there).
#
# Status: NOT YET RUN ON A GPU. Until a run's results are recorded in docs/, the CUDA kernels are
# compiled (sm_80, sm_90, no spills), not verified.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(mkdir -p "${1:?usage: gpu_check.sh OUT_DIR [DEPS_DIR]}" && cd "$1" && pwd)
DEPS=$(cd "${2:-$ROOT/.gpu-deps}" && pwd)
PYTHON="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-540}"
BUILD=/tmp/fusedkd-gpu-build
LOG=$(mktemp -d)/logs
mkdir -p "$LOG"
JOBS=$(nproc)
START=$SECONDS
status=0

say() { echo "$*" | tee -a "$OUT/summary.md"; }
left() { echo $((BUDGET - (SECONDS - START))); }
save_logs() { tar czf "$OUT/logs.tar.gz" -C "$(dirname "$LOG")" logs 2>/dev/null; }
# step NAME CAP_SECONDS FUNCTION: runs the (exported) shell function under timeout, limited to CAP
# or to what is left of the budget, whichever is less; records ok / FAILED / TIMED OUT / skipped
# with its seconds, then whatever the function wrote to $LOG/FUNCTION.report; saves the logs.
step() {
  local name=$1 cap=$2 fn=$3 remaining t0 rc
  remaining=$(left)
  if [ "$remaining" -lt 60 ]; then
    say "- $name: skipped (${remaining} s of the budget left)"
    status=1
    return 1
  fi
  [ "$cap" -lt "$remaining" ] || cap=$remaining
  t0=$SECONDS
  timeout --kill-after=10 "$cap" bash -c "$fn" > "$LOG/$fn.out" 2>&1
  rc=$?
  case $rc in
    0) say "- $name: ok ($((SECONDS - t0)) s)" ;;
    124 | 137) say "- $name: TIMED OUT after $((SECONDS - t0)) s (limit $cap s)"; status=1 ;;
    *) say "- $name: FAILED ($rc) after $((SECONDS - t0)) s"; status=1 ;;
  esac
  [ -s "$LOG/$fn.out" ] && sed 's/^/    /' "$LOG/$fn.out" | tail -n 60 | tee -a "$OUT/summary.md"
  save_logs
  return $rc
}

: > "$OUT/summary.md"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader; } 2>&1 |
  tee -a "$OUT/summary.md"
say "budget: ${BUDGET} s, ${JOBS} CPUs, $("$PYTHON" -c 'import torch; print("torch", torch.__version__)' 2>&1)"

# --- build
ARCHS="${FUSEDKD_GPU_ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')}"
ARCHS="${ARCHS:-80;90}"
say "CUDA architectures built: $ARCHS"
TORCH_PREFIX=$("$PYTHON" -c "import torch; print(torch.utils.cmake_prefix_path)")
BENCH_PREFIX="$DEPS/benchmark/usr;$DEPS/benchmark/usr/lib/x86_64-linux-gnu/cmake"
DEP_FLAGS=""
if [ ! -e /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] && [ ! -e /usr/include/cblas.h ]; then
  # OpenBLAS travels xz-compressed (prepare_gpu_deps.sh); Python's tarfile unpacks it anywhere.
  "$PYTHON" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
    "$DEPS/openblas.tar.xz" /tmp/fusedkd-deps
  blas_root=/tmp/fusedkd-deps/openblas/usr
  DEP_FLAGS="-DFUSEDKD_CBLAS_INCLUDE_DIR=$blas_root/include/x86_64-linux-gnu/openblas-pthread"
  DEP_FLAGS+=" -DFUSEDKD_CBLAS_LIBRARY=$blas_root/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so"
  export LD_LIBRARY_PATH="$blas_root/lib/x86_64-linux-gnu/openblas-pthread:$blas_root/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
if [ ! -e /usr/include/zlib.h ] && [ -e "$DEPS/zlib/usr/include/zlib.h" ]; then
  libz=$(ldconfig -p 2>/dev/null | awk '/libz\.so\.1 .*x86-64/ {print $NF; exit}')
  [ -n "$libz" ] && DEP_FLAGS+=" -DZLIB_INCLUDE_DIR=$DEPS/zlib/usr/include -DZLIB_LIBRARY=$libz"
fi
[ -d "$DEPS/fashion-mnist" ] && export FUSEDKD_FASHION_MNIST="$DEPS/fashion-mnist"
LAUNCHER=""  # ccache where there is one (not on the lent machines; a dry run elsewhere)
if command -v ccache > /dev/null 2>&1; then
  LAUNCHER="-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"
  export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
fi
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
export ROOT OUT DEPS PYTHON BUILD LOG JOBS ARCHS TORCH_PREFIX BENCH_PREFIX DEP_FLAGS LAUNCHER SANITIZER

build_gtest() {
  { cmake -S "$DEPS/googletest" -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_INSTALL_PREFIX=/tmp/gtest-prefix -DBUILD_GMOCK=OFF &&
      cmake --build /tmp/gtest-build -j "$JOBS" && cmake --install /tmp/gtest-build; } > "$LOG/gtest_build.log" 2>&1
}
build_fusedkd() {
  # shellcheck disable=SC2086  # DEP_FLAGS, LAUNCHER: words without spaces inside them
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFUSEDKD_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" $DEP_FLAGS $LAUNCHER \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;/tmp/gtest-prefix;$BENCH_PREFIX" > "$LOG/build.log" 2>&1 &&
    cmake --build "$BUILD" -j "$JOBS" >> "$LOG/build.log" 2>&1 || { tail -n 40 "$LOG/build.log"; return 1; }
}
# Every GoogleTest case with CUDA in its name: the CTest label `cuda` (tests/CMakeLists.txt), one
# process per case, 8 at a time; the log and a JUnit report (ctest_cuda.xml) go with the logs. The
# failed cases and the skipped ones (on this machine a skip means no device was seen) are listed.
cuda_tests() {
  cd "$BUILD" || return 1
  ctest -L '^cuda$' -j 8 --output-on-failure --output-junit "$LOG/ctest_cuda.xml" > "$LOG/ctest_cuda.log" 2>&1
  local rc=$?
  grep -E 'tests passed|Total Test time' "$LOG/ctest_cuda.log"
  echo "skipped: $(grep -cE '^[[:space:]]+[0-9]+ - .* \(Skipped\)$' "$LOG/ctest_cuda.log")"
  grep -E '^[[:space:]]+[0-9]+ - .* \([A-Za-z ]+\)$' "$LOG/ctest_cuda.log" | head -n 30
  return $rc
}
# compute-sanitizer TOOL over the CUDA kernel tests (small shapes; every kernel and row regime).
sanitize() {
  local rc=0 tool=$1
  "$SANITIZER" --tool "$tool" --error-exitcode 1 "$BUILD/tests/test_softmax_kernels" \
    --gtest_filter='*Cuda*R5_V3*:*Cuda*V1031*:*Cuda*V5000*:*Cuda*V20000*' > "$LOG/sanitizer_${tool}_softmax.log" 2>&1 || rc=1
  "$SANITIZER" --tool "$tool" --error-exitcode 1 "$BUILD/tests/test_soft_target_kernels" \
    --gtest_filter='*Cuda_float32_float32*:*Cuda_bfloat16_float32*' > "$LOG/sanitizer_${tool}_soft_target.log" 2>&1 || rc=1
  "$SANITIZER" --tool "$tool" --error-exitcode 1 "$BUILD/tests/test_soft_target_cuda_regimes" \
    --gtest_filter='*Cuda_float32_float32*:*Cuda_bfloat16_float32*' \
    > "$LOG/sanitizer_${tool}_soft_target_regimes.log" 2>&1 || rc=1
  "$SANITIZER" --tool "$tool" --error-exitcode 1 "$BUILD/tests/test_feature_kernels" \
    --gtest_filter='*Cuda*' > "$LOG/sanitizer_${tool}_feature.log" 2>&1 || rc=1
  local log
  for log in "$LOG"/sanitizer_"${tool}"_*.log; do
    echo "$(basename "$log"): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|^\[ +(PASSED|SKIPPED|FAILED) +\] [0-9]+ test' "$log" |
      tr -s ' \n' ' ')"
    grep -q 'ERROR SUMMARY\|RACECHECK SUMMARY' "$log" || tail -n 3 "$log"
  done
  return $rc
}
memcheck() { sanitize memcheck; }
racecheck() { sanitize racecheck; }
bench() {  # bench NAME: the CUDA cases of bench/NAME
  "$BUILD/bench/$1" --benchmark_filter=cuda --benchmark_min_time=0.2 \
    --benchmark_out="$OUT/$1.json" --benchmark_out_format=json > "$LOG/$1.log" 2>&1
  local rc=$?
  "$PYTHON" "$ROOT/scripts/bench_table.py" "$OUT/$1.json" ${COPY_GBS:+--copy-gbs "$COPY_GBS"}
  return $rc
}
bench_soft_target() { bench bench_soft_target; }
bench_feature() { bench bench_feature; }
bench_softmax() { bench bench_softmax; }
ctest_all() {
  # sanitized_cpu_build: a second, CUDA-free build under sanitizers that CI runs; no use of this
  # machine's minutes.
  cd "$BUILD" && ctest --output-on-failure -j 8 -E '^sanitized_cpu_build$' > "$LOG/ctest.log" 2>&1
  local rc=$?
  grep -E 'tests passed|Total Test time|\((Failed|Timeout|SEGFAULT|Subprocess aborted)\)' "$LOG/ctest.log" | head -n 30
  return $rc
}
pytest_all() {
  FUSEDKD_TORCH_LIBRARY="$BUILD/torch_ext/libfusedkd_torch.so" "$PYTHON" -m pytest -q "$ROOT/python/tests" \
    > "$LOG/pytest.log" 2>&1
  local rc=$?
  tail -n 3 "$LOG/pytest.log"
  return $rc
}
# The Fashion-MNIST demo on the GPU: the fused losses inside real training (a short run).
demo_cuda() {  # the study, cut down: one cell, one grid point, one seed
  "$BUILD/driver/fusedkd_demo" --device cuda --teacher-epochs 2 --labels 1000 --regimes transfer \
    --methods ce,kd_kl --temperatures 4 --alphas 0.9 --seeds 1 --steps 600 --out "$OUT/demo" \
    > "$LOG/demo.log" 2>&1
  local rc=$?
  tail -n 25 "$LOG/demo.log"
  return $rc
}
# The soft-target kernels built for sm_80 alone, run on this (sm_90) GPU: their PTX is JIT-compiled
# without the cluster code, so the launcher must not split rows over clusters (issue 12, item 4).
arch80_only() {
  local b=/tmp/fusedkd-gpu-build-80
  cmake -S "$ROOT" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFUSEDKD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=80 \
    $DEP_FLAGS $LAUNCHER -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;/tmp/gtest-prefix;$BENCH_PREFIX" > "$LOG/build80.log" 2>&1 &&
    cmake --build "$b" -j "$JOBS" --target test_soft_target_cuda_regimes >> "$LOG/build80.log" 2>&1 ||
    { tail -n 20 "$LOG/build80.log"; return 1; }
  "$b/tests/test_soft_target_cuda_regimes" --gtest_filter='SoftTargetCudaPlan.*:SoftTargetCudaErrors.*:CudaRegimes/*' \
    > "$LOG/arch80.log" 2>&1
  local rc=$?
  grep -E '^\[ +(PASSED|SKIPPED|FAILED) +\] [0-9]+ test|^\[  FAILED  \] [A-Za-z]' "$LOG/arch80.log" | head -n 20
  return $rc
}
# Device-to-device copy bandwidth (bytes read + written): the yardstick for the kernels' GB/s.
copy_bandwidth() {
  "$PYTHON" - <<'PY'
import torch
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record(); [y.copy_(x) for _ in range(20)]; e.record(); torch.cuda.synchronize()
print(f"{2 * 20 * x.numel() / (s.elapsed_time(e) / 1e3) / 1e9:.0f}")
PY
}
# bench/compare.py at LLM shapes: fusedkd, the eager composite, torch.compile of it and liger-kernel
# (its wheel from DEPS_DIR, installed into a scratch folder), with peak memory; the JSON goes into
# OUT_DIR as compare_cuda.json (copy it to docs/gpu/ and run scripts/bench_report.py). One round of
# timings per case (--rounds 1): the step's minutes on a lent GPU are few.
compare_cuda() {
  local liger=/tmp/fusedkd-liger
  rm -rf "$liger"
  ls "$DEPS"/wheels/liger_kernel-*.whl > /dev/null 2>&1 &&
    "$PYTHON" -m pip install -q --no-deps --no-index --target "$liger" "$DEPS"/wheels/liger_kernel-*.whl
  PYTHONPATH="$ROOT/python:$liger" FUSEDKD_TORCH_LIBRARY="$BUILD/torch_ext/libfusedkd_torch.so" \
    "$PYTHON" "$ROOT/bench/compare.py" --device cuda --ops kd_loss,kl_div,jsd --min-time 0.3 --rounds 1 \
    --out "$OUT/compare_cuda.json" \
    > "$LOG/compare_cuda.log" 2>&1
  local rc=$?
  tail -n 60 "$LOG/compare_cuda.log"
  return $rc
}
export -f build_gtest build_fusedkd cuda_tests sanitize memcheck racecheck bench bench_soft_target bench_feature \
  bench_softmax ctest_all pytest_all copy_bandwidth demo_cuda arch80_only compare_cuda

step "googletest build" 120 build_gtest
if ! step "build (sm_$ARCHS)" 480 build_fusedkd; then
  say "build failed: nothing else can run"
  exit 1
fi
# Most valuable first: CUDA correctness, the soft-target benchmarks (the issue's CUDA targets),
# memory and race checks, the other benchmarks, then the whole suite.
step "CUDA tests (GoogleTest)" 240 cuda_tests
step "copy bandwidth" 60 copy_bandwidth
COPY_GBS=$(tail -n 1 "$LOG/copy_bandwidth.out" | grep -E '^[0-9]+$')
export COPY_GBS
say "device-to-device copy: ${COPY_GBS:-?} GB/s (bytes read + written; 1 GiB buffers, 20 copies)"
step "bench_soft_target (CUDA)" 240 bench_soft_target
step "fusedkd vs eager, torch.compile, liger-kernel (CUDA)" 300 compare_cuda
step "compute-sanitizer memcheck" 180 memcheck
step "compute-sanitizer racecheck" 180 racecheck
step "bench_feature (CUDA)" 120 bench_feature
step "bench_softmax (CUDA)" 120 bench_softmax
step "ctest (every test)" 240 ctest_all
step "pytest" 180 pytest_all
step "demo on the GPU" 150 demo_cuda
if [ "${ARCHS%%;*}" -ge 90 ] 2>/dev/null; then step "sm_80 build on this GPU" 300 arch80_only; fi

say "total: $((SECONDS - START)) s"
save_logs
exit $status

#!/usr/bin/env bash
# The whole test suite, from a fresh machine: setup, build, the GoogleTest suites (CTest), the
# install/find_package check, and the Python tests. CUDA tests report "skipped: no CUDA device"
# where there is no GPU.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/build.sh"
BUILD="${FUSEDKD_BUILD_DIR:-$ROOT/build}"
# The nested builds CTest runs (the sanitized CPU build, the install check) share ccache's entries
# across clones, as build.sh's do.
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1

echo "== C++ tests (CTest)"
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)"

echo "== Python tests (pytest)"
FUSEDKD_TORCH_LIBRARY="$BUILD/torch_ext/libfusedkd_torch.so" \
  "$ROOT/.venv/bin/python" -m pytest -q "$ROOT/python/tests"

#!/usr/bin/env bash
# Configures (once) and builds fusedkd into build/ (Release, Ninja, ccache), against the LibTorch
# of the project's virtual environment. Extra arguments go to the CMake configure step.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="${FUSEDKD_BUILD_DIR:-$ROOT/build}"
PYTHON="${FUSEDKD_PYTHON:-$ROOT/.venv/bin/python}"

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
launcher=()
# Paths relative to the checkout in ccache's keys: a fresh clone elsewhere (CI) reuses the cache.
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
if command -v ccache >/dev/null 2>&1; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
if [ ! -f "$BUILD/build.ninja" ] || [ $# -gt 0 ]; then
  torch_prefix=$("$PYTHON" -c "import torch; print(torch.utils.cmake_prefix_path)")
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix" "${launcher[@]}" "$@"
fi
cmake --build "$BUILD" -j "$(nproc)"

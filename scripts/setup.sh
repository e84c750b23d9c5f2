#!/usr/bin/env bash
# Installs everything fusedkd needs on Debian 12, and only what is missing (safe to run again):
# build tools, GoogleTest, Google Benchmark, OpenBLAS, zlib, the Fashion-MNIST files, and a project-local Python
# virtual environment (.venv) with torch==2.11.0 (its LibTorch is what the C++ code builds against).
# The CUDA toolkit is not installed here: with nvcc present (PATH or /usr/local/cuda) the CUDA
# kernels are built, without it the build is CPU-only.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_VERSION=2.11.0
VENV="$ROOT/.venv"

packages=(build-essential cmake ninja-build ccache git pkg-config
          libgtest-dev libbenchmark-dev libopenblas-dev zlib1g-dev dataset-fashion-mnist
          python3 python3-venv python3-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# scikit-build-core: the build backend of `pip install .` (pyproject.toml; python/tests/test_package.py).
if ! "$VENV/bin/python" -c "import torch, pytest, numpy, scikit_build_core, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: creating $VENV with torch==$TORCH_VERSION"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" numpy pytest "scikit-build-core==1.1.2"
fi
echo "setup: ok ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'))"

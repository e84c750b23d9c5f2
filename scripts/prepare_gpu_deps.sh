#!/usr/bin/env bash
# Gathers, on a machine with Debian's registry, what scripts/gpu_check.sh needs on a GPU machine
# that reaches no registry: GoogleTest's sources, Google Benchmark and OpenBLAS (headers, libraries
# and CMake config from the Debian packages, with OpenBLAS's libgfortran), zlib's headers (for the
# demo; the library itself is on every Linux) and the Fashion-MNIST files, into .gpu-deps/
# (git-ignored).
# Pass that folder to the GPU machine (the device tool's `carry`).
set -euo pipefail
LIGER_VERSION=0.8.5
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
DEPS="$ROOT/.gpu-deps"
rm -rf "$DEPS"
mkdir -p "$DEPS/debs" "$DEPS/benchmark" "$DEPS/fashion-mnist"
cp -r /usr/src/googletest "$DEPS/googletest"
(cd "$DEPS/debs" && apt-get download libbenchmark-dev libbenchmark1debian >/dev/null)
for deb in "$DEPS"/debs/*.deb; do dpkg-deb -x "$deb" "$DEPS/benchmark"; done
rm -rf "$DEPS/debs"
mkdir -p "$DEPS/debs" "$DEPS/openblas"
(cd "$DEPS/debs" && apt-get download libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0 >/dev/null)
for deb in "$DEPS"/debs/*.deb; do dpkg-deb -x "$deb" "$DEPS/openblas"; done
rm -rf "$DEPS/debs"
# What travels to the GPU machine is limited (64 MiB with the working tree): keep the shared
# libraries and headers alone, xz-compressed (36 MB of OpenBLAS become about 4).
find "$DEPS/openblas" \( -name '*.a' -o -name 'liblapack*' -o -name '*.pc' -o -name '*.cmake' \) -delete
rm -rf "$DEPS/openblas/usr/share"
tar -C "$DEPS" -cJf "$DEPS/openblas.tar.xz" openblas
rm -rf "$DEPS/openblas"
mkdir -p "$DEPS/debs" "$DEPS/zlib"
(cd "$DEPS/debs" && apt-get download zlib1g-dev >/dev/null)
for deb in "$DEPS"/debs/*.deb; do dpkg-deb -x "$deb" "$DEPS/zlib"; done
rm -rf "$DEPS/debs"
cp /usr/share/datasets/fashion-mnist/*.gz "$DEPS/fashion-mnist/"
# liger-kernel, the peer bench/compare.py measures on the GPU: pure Python over Triton (which the
# GPU machine's torch brings), pinned here and never a dependency of the library.
"$ROOT/.venv/bin/python" -m pip download -q --no-deps -d "$DEPS/wheels" "liger-kernel==$LIGER_VERSION"
tree_bytes=$(cd "$ROOT" && git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f 1)
deps_bytes=$(du -sb "$DEPS" | cut -f 1)
total_mib=$(( (tree_bytes + deps_bytes) / 1048576 ))
echo "prepare_gpu_deps: $DEPS holds $((deps_bytes / 1048576)) MiB; with the working tree ${total_mib} MiB travel (limit 64)"
if [ "$total_mib" -ge 64 ]; then
  echo "prepare_gpu_deps: over the 64 MiB a device call carries" >&2
  exit 1
fi

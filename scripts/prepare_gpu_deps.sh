#!/usr/bin/env bash
# Gathers, on a machine with Debian's registry, what scripts/gpu_check.sh needs on a GPU machine
# that reaches no registry: GoogleTest's sources, Google Benchmark and OpenBLAS (headers, libraries
# and CMake config from the Debian packages, with OpenBLAS's libgfortran), zlib's headers (for the
# demo; the library itself is on every Linux) and the Fashion-MNIST files, into .gpu-deps/
# (git-ignored).
# Pass that folder to the GPU machine (the device tool's `carry`).
set -euo pipefail
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
mkdir -p "$DEPS/debs" "$DEPS/zlib"
(cd "$DEPS/debs" && apt-get download zlib1g-dev >/dev/null)
for deb in "$DEPS"/debs/*.deb; do dpkg-deb -x "$deb" "$DEPS/zlib"; done
rm -rf "$DEPS/debs"
cp /usr/share/datasets/fashion-mnist/*.gz "$DEPS/fashion-mnist/"
du -sh "$DEPS"

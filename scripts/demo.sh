#!/usr/bin/env bash
# The main job: setup, build, then the Fashion-MNIST distillation demo (driver/): a teacher CNN,
# and a small student trained plainly and with each of fusedkd's losses, compared on the test set.
# Results (results.md, results.json, results.svg) go to out/demo/. Extra arguments go to
# fusedkd_demo (see `build/driver/fusedkd_demo --help`), e.g. --seeds 1 --epochs 2 for a quick look.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/build.sh"
BUILD="${FUSEDKD_BUILD_DIR:-$ROOT/build}"
cd "$ROOT"
exec "$BUILD/driver/fusedkd_demo" --out "$ROOT/out/demo" "$@"

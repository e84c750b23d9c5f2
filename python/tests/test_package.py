"""The pip package (issue 16): ``pip install --no-build-isolation .`` from the checkout, and
``pip wheel`` then installing the wheel, each into a fresh virtual environment that reuses this
environment's torch (a .pth file pointing at its site-packages); then, from a temporary
directory with no environment variable, ``import fusedkd`` and one forward + backward of every
op, checked against the op library of the build tree.

The two pip builds share the persistent CMake build directory build/python-<wheel tag>
(pyproject.toml): the second only relinks. With ccache warm the first takes about 20 s here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("scikit_build_core") is None,
                                reason="scikit-build-core is not installed (scripts/setup.sh installs it)")

# Run inside each fresh environment, from an empty directory: every op forward + backward, the
# results printed as float64 sums for the comparison with this process's build-tree library.
PROBE = textwrap.dedent("""
    import json, sys
    import torch
    import fusedkd
    from fusedkd import nn as knn
    g = torch.Generator().manual_seed(0)
    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()
    s, t, y = r(6, 11), r(6, 11), torch.tensor([0, 3, -100, 10, 5, 1])
    fs, ft = r(2, 3, 4, 4), r(2, 5, 4, 4)
    w, b = r(5, 3), r(5)
    calls = {
        "softmax_t": lambda: (fusedkd.softmax_t(s, temperature=2.0) * t).sum(),
        "log_softmax_t": lambda: (fusedkd.log_softmax_t(s, temperature=0.5) * t).sum(),
        "kl_div": lambda: fusedkd.kl_div(s, t, temperature=3.0),
        "jsd": lambda: fusedkd.jsd(s, t, temperature=2.0, beta=0.3),
        "soft_mse": lambda: fusedkd.soft_mse(s, t, temperature=4.0),
        "kd_loss": lambda: knn.KDLoss(temperature=2.0, soft_weight=0.7, hard_weight=0.3)(s, t, y),
        "feature_mse": lambda: fusedkd.feature_mse(fs, fs.detach() * 0.5),
        "attention_transfer": lambda: fusedkd.attention_transfer(fs, ft),
        "projected_feature_mse": lambda: fusedkd.projected_feature_mse(fs, w, b, ft),
        "similarity_preserving": lambda: fusedkd.similarity_preserving(fs, ft),
    }
    out = {"version": fusedkd.__version__, "library": str(fusedkd.library_path), "results": {}}
    for name, call in calls.items():
        leaves = [x for x in (s, t, fs, ft, w, b)]
        loss = call()
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        out["results"][name] = [loss.item()] + [0.0 if x is None else x.sum().item() for x in grads]
    json.dump(out, sys.stdout)
""")


def fresh_venv(path: Path) -> Path:
    """A new virtual environment whose site-packages also sees this one's (torch, scikit-build-core)."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "project_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def build_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("FUSEDKD_TORCH_LIBRARY", None)
    if shutil.which("ccache"):  # the same cache as scripts/build.sh's builds
        env.update(CMAKE_CXX_COMPILER_LAUNCHER="ccache", CMAKE_CUDA_COMPILER_LAUNCHER="ccache",
                   CCACHE_BASEDIR=str(ROOT), CCACHE_NOHASHDIR="1")
    if not shutil.which("nvcc") and Path("/usr/local/cuda/bin/nvcc").exists():
        env["CUDACXX"] = "/usr/local/cuda/bin/nvcc"
    return env


def pip(python: Path, *args: str, cwd: Path) -> None:
    result = subprocess.run([str(python), "-m", "pip", *args], cwd=cwd, env=build_env(), capture_output=True,
                            text=True)
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def probe(python: Path, cwd: Path, env: dict) -> dict:
    result = subprocess.run([str(python), "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same probe against the build tree's library (PYTHONPATH=python, the developer's way)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    return probe(Path(sys.executable), tmp_path_factory.mktemp("ref"), env)


def check_installed(found: dict, reference: dict, venv: Path) -> None:
    assert Path(found["library"]).is_relative_to(venv), f"loaded {found['library']}, not the installed copy"
    assert found["version"] == reference["version"] != "unknown"
    assert found["results"].keys() == reference["results"].keys()
    for name, values in found["results"].items():
        assert values == pytest.approx(reference["results"][name], rel=1e-12, abs=1e-12), name


def test_pip_install_from_the_checkout(tmp_path, reference):
    python = fresh_venv(tmp_path / "venv")
    pip(python, "install", "--no-build-isolation", "--no-deps", str(ROOT), cwd=tmp_path)
    check_installed(probe(python, tmp_path, build_env()), reference, tmp_path / "venv")


def test_pip_wheel_installs_in_another_environment(tmp_path, reference):
    builder = fresh_venv(tmp_path / "builder")
    pip(builder, "wheel", "--no-build-isolation", "--no-deps", str(ROOT), "-w", str(tmp_path / "dist"), cwd=tmp_path)
    wheels = list((tmp_path / "dist").glob("fusedkd-*.whl"))
    assert len(wheels) == 1, wheels
    assert wheels[0].name.startswith(f"fusedkd-{reference['version']}-")
    python = fresh_venv(tmp_path / "venv")
    pip(python, "install", "--no-deps", str(wheels[0]), cwd=tmp_path)
    check_installed(probe(python, tmp_path, build_env()), reference, tmp_path / "venv")

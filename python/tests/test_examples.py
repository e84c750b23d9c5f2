"""The Python examples (examples/python) run as a user runs them, at small sizes; each exits
non-zero unless its loss decreases (and, for the classifier, the student learns). And the
examples in fusedkd.functional's docstrings, as doctests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "python"


@pytest.mark.parametrize("script,args", [("distill_classifier.py", ["--steps", "150"]),
                                         ("replace_kl_div.py", ["--steps", "100"])])
def test_example_runs_and_learns(script, args, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)


def test_functional_docstring_examples():
    import doctest

    import torch

    import fusedkd
    import fusedkd.functional

    g = torch.Generator().manual_seed(0)
    names = {"torch": torch, "fusedkd": fusedkd, "F": torch.nn.functional,
             "s": torch.randn(4, 10, generator=g), "t": torch.randn(4, 10, generator=g),
             "y": torch.tensor([1, 0, 9, 3]), "fs": torch.randn(2, 3, 8, 8, generator=g),
             "ft": torch.randn(2, 5, 8, 8, generator=g)}
    result = doctest.testmod(fusedkd.functional, extraglobs=names, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0, result

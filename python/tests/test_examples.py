"""The Python examples (examples/python) run as a user runs them, at small sizes; each exits
non-zero unless its loss decreases (and, for the classifier, the student learns)."""
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

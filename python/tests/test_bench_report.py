"""scripts/bench_report.py, the generator of docs/benchmarks.md: its targets table counts what a
run's figures meet (and names what they do not), from a synthetic compare.py result."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_report  # noqa: E402


def result(op, phase, shape, impl, ms, floor_ms=1.0, dtype="float32"):
    return dict(op=op, phase=phase, device="cpu", dtype=dtype, shape=list(shape), impl=impl, ms=ms,
                peak_extra_mb=None, floor_ms=floor_ms, copy_gbs=50.0, error=None)


def run_data():
    rows = [
        # kd_loss at V = 32,000: 3x compiled (met), and 1.8x in bfloat16 (below 2x)
        result("kd_loss", "fwd+bwd", (64, 32000), "fusedkd", 10.0),
        result("kd_loss", "fwd+bwd", (64, 32000), "compiled", 30.0),
        result("kd_loss", "fwd+bwd", (64, 32000), "fusedkd", 10.0, dtype="bfloat16"),
        result("kd_loss", "fwd+bwd", (64, 32000), "compiled", 18.0, dtype="bfloat16"),
        # the statistics sweep at 60% of the floor (met)
        result("kd_loss", "stats", (64, 32000), "fusedkd", 10.0, floor_ms=6.0),
        result("kd_loss", "stats", (64, 32000), "compiled", 20.0, floor_ms=6.0),
        # softmax_t slower than compiled (below 1x)
        result("softmax_t", "fwd+bwd", (64, 1000), "fusedkd", 2.0),
        result("softmax_t", "fwd+bwd", (64, 1000), "compiled", 1.9),
    ]
    return dict(machine={}, date="2026-11-30", command="test", results=rows)


def target_rows(lines):
    return {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines if line.startswith("| ")}


def test_targets_count_the_cases_that_meet_them_and_name_the_others():
    rows = target_rows(bench_report.targets_section(run_data(), "cpu"))
    cases, met, below = rows["kd_loss fwd+bwd at least 2x torch.compile at V = 32,000"]
    assert (cases, met) == ("2", "1")
    assert "bfloat16 64x32000: 1.80x" in below
    cases, met, below = rows["kd_loss statistics sweep (stats) within 2x of the memory floor"]
    assert (cases, met) == ("1", "1") and below.startswith("(closest)") and "60% of floor" in below
    cases, met, below = rows["softmax_t, log_softmax_t: no slower than torch.compile"]
    assert (cases, met) == ("1", "0") and "0.95x" in below
    # no case of its kind in the run: no row
    assert not any(text.startswith("feature-map") for text in rows)


def test_the_report_is_written_from_the_json(tmp_path):
    data = run_data()
    data["machine"] = dict(device="test cpu", cpus=2, threads=2, torch="2.11.0", fusedkd="0.1.0", python="3.11",
                           liger_kernel=None, huge_pages=True, output_cache_mb=1024, openblas_coretype="Haswell")
    (tmp_path / "cpu.json").write_text(json.dumps(data))
    out = tmp_path / "benchmarks.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_report.py"), "--compare", str(tmp_path / "cpu.json"),
                    "--command", "test", "--out", str(out)], check=True, capture_output=True)
    text = out.read_text()
    assert "| fwd+bwd | float32 | 64x32000 | 10.0 | 30.0 | 10% | 50 | - | 3.00x |" in text  # no eager column
    assert "**Targets (CPU, issue 15)**" in text
    assert "Not yet measured on a GPU" in text
    assert "OpenBLAS kernels (the feature losses' CPU GEMMs): Haswell (OPENBLAS_CORETYPE set in the environment)" in text
    assert "fusedkd's CPU output cache: 1024 MiB;" in text
    del data["machine"]["output_cache_mb"]  # a run from before the cache: said so, not guessed
    (tmp_path / "cpu.json").write_text(json.dumps(data))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_report.py"), "--compare", str(tmp_path / "cpu.json"),
                    "--command", "test", "--out", str(out)], check=True, capture_output=True)
    assert "fusedkd's CPU output cache: not recorded;" in out.read_text()


def test_the_projection_rate_is_its_gemm_work_over_the_time():
    shape, teacher = (128, 256, 14, 14), [128, 512, 14, 14]
    rows = [dict(result("projected_feature_mse", "fwd+bwd", shape, impl, ms), teacher_shape=teacher)
            for impl, ms in (("fusedkd", 96.0), ("compiled", 60.0))]
    rows.append(result("feature_mse", "fwd+bwd", shape, "fusedkd", 1.0))  # not a GEMM loss: no row
    lines = bench_report.gemm_section(dict(results=rows))
    # 3 GEMMs of 2 N S C_s C_t each: 6 x 128 x 196 x 256 x 512 = 19.73 GFLOP; over 96 and 60 ms
    assert [line for line in lines if line.startswith("| 128x")] == ["| 128x256x14x14 | 512 | 19.7 | 206 | - | 329 |"]
    assert bench_report.gemm_section(dict(results=rows[2:])) == []

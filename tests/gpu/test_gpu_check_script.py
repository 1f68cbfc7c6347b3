"""The GPU check's script runs end to end here, in its dry-run mode (tiny sizes, the CPU):
everything but CUDA itself. Not marked `gpu`: these run without one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONPATH"] = f"{ROOT / 'src'}:{ROOT}"
    env["GPU_CHECK_REPORT"] = str(tmp_path / "gpu.md")
    return env


def test_two_stages_measure_and_report(tmp_path):
    """The driver: stages in their own processes, figures saved as measured, the report."""
    out = tmp_path / "gpu.md"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--dry-run", "--only", "env",
         "metrics", "--out", str(out), "--work", str(tmp_path / "work")],
        env=_env(tmp_path), check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = out.read_text()
    assert "env ok" in report and "metrics ok" in report
    assert "| 30,000 | xgauc |" in report and "| False |" not in report  # device == numpy
    assert (tmp_path / "work" / "metrics.json").exists()


def test_a_stage_past_its_budget_is_stopped_and_named(tmp_path):
    out = tmp_path / "gpu.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--dry-run", "--only", "env",
         "--budget-scale", "0.001", "--out", str(out), "--work", str(tmp_path / "work")],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "env stopped at its 0 s budget" in out.read_text()


@pytest.mark.slow
def test_the_whole_dry_run(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "gpu.md").read_text()
    for stage in ("env", "world", "train", "ddp", "retrieval", "metrics", "rechub"):
        assert f"{stage} ok" in report
    assert "| False |" not in report

"""Every benchmark runs in smoke mode (tiny inputs); benchmarks are never timed here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_smoke(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke"],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("search", "build", "fit", "predict", "evaluator", "scale", "quality", "retrieval"):
        assert f"== {name}" in result.stdout

"""Every example script runs (fast mode: tiny models, toy data)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "torchrun_lora.py"])
def test_example_runs(script, tmp_path):
    env = {**os.environ, "PROMPTKIT_EXAMPLES_FAST": "1", "PYTHONPATH": str(EXAMPLES)}
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "an example prints what it did"


def test_torchrun_example(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    env = {**os.environ, "PROMPTKIT_EXAMPLES_FAST": "1", "PYTHONPATH": str(EXAMPLES),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29544",
                             str(EXAMPLES / "torchrun_lora.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0" in result.stdout and "rank 1" in result.stdout
    assert (tmp_path / "runs" / "torchrun-lora" / "manifest.json").is_file()


def test_demo_config_is_valid():
    from promptkit.runner import load_config

    config = load_config(EXAMPLES / "configs" / "demo.yaml")
    names = {n for e in config.experiments for n in e.adapters}
    assert {"full", "lora", "prompt_tuning", "zero_shot", "knn"} <= names

"""Every benchmark runs in smoke mode (tiny inputs); benchmarks are never timed here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_smoke(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke"],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("search", "build", "fit", "predict", "evaluator", "scale", "quality", "retrieval"):
        assert f"== {name}" in result.stdout


def test_readme_holds_the_committed_benchmark_table(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from table import END, START, include_in_readme

    readme = (ROOT / "README.md").read_text()
    table = (ROOT / "benchmarks" / "results" / "table.md").read_text()
    assert f"{START}\n{table}{END}" in readme  # make bench keeps them equal
    copy = tmp_path / "README.md"
    copy.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    include_in_readme("| new |\n", copy)
    assert copy.read_text() == f"intro\n{START}\n| new |\n{END}\noutro\n"


def test_train_efficiency_smoke(tmp_path):
    out = tmp_path / "train_efficiency.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_efficiency.py"), "--smoke",
         "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    saved = json.loads(out.read_text())
    curve = saved["promptkit"]["curve"]
    assert len(curve) >= 2 and all(0 <= p["accuracy"] <= 1 for p in curve)
    assert [p["seconds"] for p in curve] == sorted(p["seconds"] for p in curve)
    flops = saved["flops"]
    assert flops["padded_tokens"]["grouped"] >= flops["real_tokens"] > 0
    assert 0 < flops["mfu"]["promptkit"] < 1


def test_serve_load_smoke(tmp_path):
    out = tmp_path / "serve_load.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--smoke", "--requests", "64",
         "--passes", "2", "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    saved = json.loads(out.read_text())
    for label in ("batching", "no_batching"):
        assert saved[label]["failures"] == 0 and saved[label]["requests"] == 64
        assert len(saved[label]["passes_per_second"]) == 2
    assert saved["served_vs_offline"] == pytest.approx(
        saved["batching"]["requests_per_second"] / saved["offline_predict_per_second"])


def _printed_result(stdout: str) -> dict:
    """The JSON object a benchmark prints last (from its line that opens with "{")."""
    import json

    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def test_onnx_int8_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "onnx_int8.py"), "--smoke", "--passes", "3",
         "--out", str(tmp_path / "int8")], capture_output=True, text=True, timeout=600,
        cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = _printed_result(result.stdout)
    assert all(len(saved["passes_examples_per_second"][n]) == 3 for n in ("fp32", "int8"))
    assert saved["examples_per_second"]["int8"] == sorted(
        saved["passes_examples_per_second"]["int8"])[1]  # the median of the 3 passes
    assert saved["speedup"] == pytest.approx(
        saved["examples_per_second"]["int8"] / saved["examples_per_second"]["fp32"], abs=0.01)
    assert (tmp_path / "int8" / "int8" / "model.onnx").is_file()


def test_distill_smoke_chooses_the_recipe_on_validation(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "distill.py"), "--smoke", "--only-llm",
         "--recipes", "soft,soft_sharpened", "--out", str(tmp_path / "distill")],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    llm = _printed_result(result.stdout)["from_zero_shot_llm"]
    scores = llm["validation_accuracy"]
    assert set(scores) == {"teacher", "soft", "soft_sharpened"}
    assert scores[llm["recipe"]] == max(scores["soft"], scores["soft_sharpened"])
    assert 0 <= llm["student_accuracy"]["low"] <= llm["student_accuracy"]["value"] <= 1

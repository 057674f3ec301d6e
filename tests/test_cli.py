"""The promptkit command: help everywhere, one-line errors, the main subcommands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

COMMANDS = [[], ["run"], ["train"], ["eval"], ["compare"], ["kb"], ["kb", "build"],
            ["kb", "update"], ["kb", "query"], ["kb", "stats"], ["template"],
            ["template", "list"], ["template", "show"], ["template", "render"],
            ["template", "check"], ["models"], ["config"], ["config", "schema"],
            ["config", "check"], ["version"], ["serve"], ["monitor"], ["kb", "migrate"],
            ["kb", "optimize"]]


def promptkit(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "promptkit", *args], capture_output=True,
                            text=True, env={"COLUMNS": "120", "HF_HUB_OFFLINE": "1",
                                            "PATH": "/usr/bin:/bin",
                                            **{k: v for k, v in __import__("os").environ.items()
                                               if k.startswith(("PROMPTKIT", "HOME"))}})
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help_is_complete(command):
    result = promptkit(*command, "--help", check=True)
    assert "Usage:" in result.stdout
    for line in result.stdout.splitlines():  # every option and command has help text
        stripped = line.strip("│ ").strip()
        if stripped.startswith("--") and "--help" not in stripped:
            assert len(stripped.split(None, 2)) >= 2, line


def test_bad_config_is_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("output: runs/x\nexperiments:\n  - name: a\n    data: rotten_tomatoes\n"
                      "    task: {kind: classification}\n    adapters: {}\n    resamples: 3\n")
    result = promptkit("run", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "experiments.0.resamples" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text("outptu: x\nexperiments: []\n")
    result = promptkit("config", "check", str(typo))
    assert "outptu: unknown setting" in result.stderr and result.returncode == 2
    assert "Did you mean 'output'" in result.stderr


def test_adapter_settings_are_typed(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("experiments:\n  - name: a\n    data: rotten_tomatoes\n"
                      "    task: {kind: classification}\n"
                      "    adapters:\n      mine: {adapter: lora, lerning_rate: 0.001}\n")
    result = promptkit("config", "check", str(config))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "lerning_rate: unknown setting" in result.stderr
    assert "Did you mean 'learning_rate'" in result.stderr and "use_dora" in result.stderr
    nested = tmp_path / "nested.yaml"
    nested.write_text("experiments:\n  - name: a\n    data: python_faq\n"
                      "    task: {kind: generation, template: rag_qa}\n"
                      "    adapters:\n      rag: {adapter: retrieval, knowledge: faq,\n"
                      "                   base: {adapter: prompt, max_new_tokens: -1}}\n")
    result = promptkit("config", "check", str(nested))
    assert result.returncode == 2 and "max_new_tokens" in result.stderr
    schema = json.loads(promptkit("config", "schema", check=True).stdout)
    lora = schema["$defs"]["lora_settings"]["properties"]
    assert {"r", "alpha", "use_dora", "learning_rate"} <= set(lora)


def test_debug_shows_traceback(tmp_path):
    result = promptkit("--debug", "run", str(tmp_path / "missing.yaml"))
    assert "Traceback" in result.stderr


def test_schema_and_version():
    schema = json.loads(promptkit("config", "schema", check=True).stdout)
    assert "experiments" in schema["properties"]
    assert promptkit("version", check=True).stdout.startswith("promptkit ")


def test_kb_commands(tmp_path, tiny_bert):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("---\nteam: blue\n---\nThe Zorblat river is 420 km long.\n")
    (docs / "b.md").write_text("---\nteam: red\n---\nMount Quill is 3,100 m high.\n")
    out = tmp_path / "kb"
    stats = json.loads(promptkit("kb", "build", str(docs), "--out", str(out), "--embedder",
                                 tiny_bert, check=True).stdout)
    assert stats["documents"] == 2
    hits = json.loads(promptkit("kb", "query", str(out), "river", "-k", "5", "--filter",
                                "team=red", "--json", check=True).stdout)
    assert [h["source"] for h in hits] == ["b.md"]
    update = json.loads(promptkit("kb", "update", str(out), check=True).stdout)
    assert update["chunks_embedded"] == 0
    assert "chunks" in promptkit("kb", "stats", str(out), check=True).stdout


def test_template_commands():
    assert "sentiment" in promptkit("template", "list", check=True).stdout
    rendered = promptkit("template", "render", "sentiment", "--example", '{"text": "great"}',
                         check=True).stdout
    assert "Review: great" in rendered
    bad = promptkit("template", "render", "sentiment", "--example", "{not json")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    unknown = promptkit("template", "show", "sentimnt")
    assert "Did you mean 'sentiment'" in unknown.stderr


def test_train_and_eval(tmp_path, tiny_bert):
    data = tmp_path / "train.jsonl"
    from promptkit.testing import toy_classification

    data.write_text("\n".join(json.dumps(r) for r in toy_classification(32)))
    # no --labels: the label set is read from the data
    promptkit("train", "full", "--data", str(data), "--model",
              tiny_bert, "--out", str(tmp_path / "adapter"), "--set", "epochs=2", check=True)
    saved = json.loads((tmp_path / "adapter" / "manifest.json").read_text())
    assert saved["config"]["task"]["labels"] == ["negative", "positive"]
    result = promptkit("eval", str(tmp_path / "adapter"), "--data", str(data), "--out",
                       str(tmp_path / "report"), check=True)
    assert "accuracy" in result.stdout and (tmp_path / "report" / "report.html").is_file()
    compare = tmp_path / "compare.yaml"
    compare.write_text(f"data: {data}\nadapters:\n  one: {tmp_path / 'adapter'}\n"
                       f"  two: {tmp_path / 'adapter'}\n")
    assert "paired tests" in promptkit("compare", str(compare), check=True).stdout


def test_run_config_end_to_end(tmp_path, tiny_bert):
    data = tmp_path / "data.jsonl"
    from promptkit.testing import toy_classification

    data.write_text("\n".join(json.dumps(r) for r in toy_classification(40)))
    config = tmp_path / "run.yaml"
    config.write_text(f"""
output: {tmp_path / 'out'}
save_adapters: true
experiments:
  - name: toy
    data: {data}
    train_split: test
    eval_split: null
    task: {{kind: classification, template: sentiment}}
    resamples: 100
    adapters:
      knn: {{adapter: knn, embedder: {tiny_bert}, top_k: 3}}
      full: {{adapter: full, model: {tiny_bert}, epochs: 2}}
""")
    result = promptkit("run", str(config), "--set", "experiments.0.resamples=50", check=True)
    assert "override" in result.stderr
    assert (tmp_path / "out" / "report.html").is_file()
    assert (tmp_path / "out" / "toy" / "report.json").is_file()
    # the report and the combined page are written beside the saved adapters, not over them
    for name in ("knn", "full"):
        assert (tmp_path / "out" / "toy" / "adapters" / name / "manifest.json").is_file()
    import promptkit as pk

    assert pk.load_adapter(tmp_path / "out" / "toy" / "adapters" / "full").task.labels == [
        "negative", "positive"]
    # the run ends with the command that serves its best adapter, and that folder serves
    hint = (tmp_path / "out" / "serve.txt").read_text()
    assert hint.strip() in result.stdout and "promptkit serve " in hint
    served = hint.split("promptkit serve ")[1].split()[0]
    from promptkit.serve import discover

    assert list(discover([served])) == [served.rsplit("/", 1)[1]]

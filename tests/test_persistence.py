"""Saving is pure and loses nothing: knowledge bases, reports beside other files, failed writes,
escaped report pages."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import promptkit as pk
from promptkit.adapters import Prediction
from promptkit.artifacts import read_manifest
from promptkit.evaluation.combined import write_combined
from promptkit.testing import toy_generation


@pytest.fixture()
def kb_dir(tmp_path, tiny_bert):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "river.txt").write_text("The Zorblat river is approximately 420 km long.\n")
    (docs / "cats.txt").write_text("Cats are small carnivorous mammals that purr.\n")
    pk.KnowledgeBase.build(docs, embedder=tiny_bert, path=tmp_path / "kb")
    return tmp_path / "kb"


def test_save_elsewhere_does_not_rebind(kb_dir, tmp_path):
    kb = pk.KnowledgeBase.load(kb_dir)
    kb.save(tmp_path / "copy")
    assert kb.path == kb_dir
    kb.add(["A new fact about owls."])
    assert len(pk.KnowledgeBase.load(kb_dir)) == len(kb)  # the add went to the original
    assert len(pk.KnowledgeBase.load(tmp_path / "copy")) == len(kb) - 1


def test_evaluator_leaves_the_knowledge_base_usable(kb_dir, tiny_gpt2, monkeypatch):
    kb = pk.KnowledgeBase.load(kb_dir)
    reader = pk.create_adapter("prompt", model=tiny_gpt2, max_new_tokens=4,
                               task=pk.Task.generation(template="rag_qa"))
    rag = pk.create_adapter("retrieval", base=reader, knowledge=kb, top_k=1)
    rag.fit(toy_generation(2))
    writes = []
    import promptkit.artifacts as artifacts

    original = artifacts.write_artifact
    monkeypatch.setattr(artifacts, "write_artifact",
                        lambda path, *a, **k: writes.append(path) or original(path, *a, **k))
    report = pk.Evaluator(rag.task, resamples=50).compare({"rag": rag}, toy_generation(4))
    assert writes == [], "measuring an adapter's size must not write a copy of it"
    # the saved adapter references the knowledge base rather than copying it
    assert 0 <= report["rag"].costs["artifact_mb"] < kb.nbytes() / 2**20
    assert kb.path == kb_dir
    kb.add(["Owls can turn their heads far round."])  # fails if the path went stale
    assert len(pk.KnowledgeBase.load(kb_dir)) == len(kb)


def _report(title="t", adapter="a", labels=("negative", "positive"), text="fine"):
    task = pk.Task.classification(list(labels))
    records = [{"text": text, "label": labels[i % 2]} for i in range(6)]
    predictions = [Prediction(label=labels[i % 3 % 2], scores={labels[0]: 0.4, labels[1]: 0.6})
                   for i in range(6)]
    evaluator = pk.Evaluator(task, resamples=50)
    result = evaluator.score(task, records, predictions, adapter)
    report = evaluator._report(task, [result], records)
    report.title = title
    return report


def test_report_save_keeps_what_else_is_in_the_folder(tmp_path):
    experiment = tmp_path / "exp"
    (experiment / "adapters" / "lora").mkdir(parents=True)
    (experiment / "adapters" / "lora" / "weights.bin").write_bytes(b"x" * 10)
    _report().save(experiment)
    assert (experiment / "adapters" / "lora" / "weights.bin").read_bytes() == b"x" * 10
    assert (experiment / "report.html").is_file()
    read_manifest(experiment, kind="report")  # the report's own files verify
    _report(title="again").save(experiment)  # saving twice keeps them too
    assert (experiment / "adapters" / "lora" / "weights.bin").is_file()


def test_failed_combined_write_leaves_every_file(tmp_path, monkeypatch):
    out = tmp_path / "run"
    report = _report()
    report.save(out / "exp")
    write_combined([report], out, "first")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_write = Path.write_text

    def disk_full(self, data, *args, **kwargs):
        if self.name == "report.md":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(pk.errors.ArtifactError):
        write_combined([report], out, "second")
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    read_manifest(out, kind="run")
    read_manifest(out / "exp", kind="report")


def test_report_pages_escape_user_strings(tmp_path):
    evil = "<script>alert(1)</script>"
    report = _report(title=evil, adapter="<b>bold</b>", labels=("<img src=x>", "ok"), text=evil)
    report.notes.append("<iframe>")
    page = report.html()
    write_combined([report], tmp_path / "run", title=evil, notes=["<i>note</i>"])
    combined = (tmp_path / "run" / "report.html").read_text()
    for html in (page, combined):
        assert "<script>" not in html and "<b>bold" not in html and "<img src=x>" not in html
        assert "<iframe>" not in html and "<i>note" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;bold" in html
    assert json.loads((tmp_path / "run" / "report.json").read_text())["title"] == evil

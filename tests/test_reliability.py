"""Bad input gives a clear PromptkitError and writes nothing; fuzzed inputs never crash otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import promptkit as pk
from promptkit.artifacts import read_manifest, write_artifact
from promptkit.errors import PromptkitError
from promptkit.knowledge import ChunkingConfig, chunk_text
from promptkit.knowledge.loaders import loaders
from promptkit.metrics import ClassificationBatch, GenerationBatch, metrics
from promptkit.templates import Template

TASK = pk.Task.classification(["negative", "positive"], template="sentiment")


def _file(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _saved_kb(tmp: Path, tiny: str) -> Path:
    pk.KnowledgeBase.build(["alpha", "beta"], embedder=tiny, path=tmp / "kb")
    return tmp / "kb"


def _corrupt(path: Path, mode: str) -> None:
    if mode == "truncate":
        with open(path, "r+b") as handle:
            handle.truncate(max(1, path.stat().st_size // 2))
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def _saved_adapter(tmp: Path, tiny: str) -> Path:
    adapter = pk.create_adapter("lora", model=tiny, task=TASK, epochs=1)
    adapter.fit(pk.testing.toy_classification(8))
    return adapter.save(tmp / "adapter")


# each case: (name, callable(tmp, tiny_bert) that must raise, expected words in the message)
BAD_INPUT = [
    ("malformed jsonl", lambda t, m: TASK.prepare(_file(t, "d.jsonl", '{"text": 1}\n{oops')),
     "d.jsonl:2"),
    ("malformed csv", lambda t, m: TASK.prepare(_file(t, "d.csv", "text,label\na,b,c\n")),
     "d.csv:2"),
    ("non-utf8 data", lambda t, m: TASK.prepare(_file(t, "d.jsonl", b'{"text": "\xff"}\n')),
     "UTF-8"),
    ("empty dataset", lambda t, m: TASK.prepare([]), "empty"),
    ("empty file", lambda t, m: TASK.prepare(_file(t, "e.jsonl", "")), "no examples"),
    ("missing field", lambda t, m: TASK.prepare([{"txt": "a", "label": "positive"}]), "lacks"),
    ("unknown label", lambda t, m: TASK.prepare([{"text": "a", "label": "meh"}]),
     "not in the label set"),
    ("one-class training set", lambda t, m: pk.create_adapter("full", model=m, task=TASK).fit(
        [{"text": "a", "label": "positive"}] * 4), "only one class"),
    ("predict before fit", lambda t, m: pk.create_adapter("full", model=m, task=TASK).predict(
        ["a"]), "call .fit"),
    ("template undefined variable", lambda t, m: Template.from_string("{{ nope }}").render({}),
     "undefined"),
    ("template sandbox escape", lambda t, m: Template.from_string(
        "{{ cycler.__init__.__globals__.os.system('echo x') }}").render({}), "unsafe"),
    ("template unknown name", lambda t, m: pk.Task.classification(["a", "b"], template="sentimnt"),
     "Did you mean"),
    ("template fields mismatch", lambda t, m: pk.Task.classification(
        ["a", "b"], text_fields=["body"], template="sentiment"), "body"),
    ("kb binary file strict", lambda t, m: pk.KnowledgeBase.build(
        Path(_file(t, "bin.txt", b"\x00\x01")).parent, embedder=m, strict=True), "binary"),
    ("kb symlink outside", lambda t, m: (os.symlink("/etc/hostname", t / "link.txt"),
                                         pk.knowledge.scan_folder(t)), "outside"),
    ("kb other embedder", lambda t, m: pk.KnowledgeBase.load(_saved_kb(t, m), embedder="minilm"),
     "built with embedder"),
    ("kb query dimension", lambda t, m: pk.KnowledgeBase.load(_saved_kb(t, m)).search_by_vector(
        np.zeros((1, 5), dtype=np.float32), 1), "dimensions"),
    ("kb k=0", lambda t, m: pk.KnowledgeBase.load(_saved_kb(t, m)).search("a", k=0), "at least 1"),
    ("kb truncated vectors", lambda t, m: (_corrupt(_saved_kb(t, m) / "data.0.f32", "truncate"),
                                           pk.KnowledgeBase.load(t / "kb")), "data.0.f32"),
    ("kb corrupted vectors", lambda t, m: (_corrupt(_saved_kb(t, m) / "data.0.f32", "flip"),
                                           pk.KnowledgeBase.load(t / "kb", verify=True)),
     "sha256"),
    ("kb truncated sqlite", lambda t, m: (_corrupt(_saved_kb(t, m) / "docstore.sqlite",
                                                   "truncate"), pk.KnowledgeBase.load(t / "kb")),
     "docstore.sqlite"),
    ("kb corrupted manifest", lambda t, m: ((_saved_kb(t, m) / "manifest.json").write_text("{"),
                                            pk.KnowledgeBase.load(t / "kb")), "manifest.json"),
    ("adapter truncated safetensors", lambda t, m: (
        _corrupt(_saved_adapter(t, m) / "adapter_model.safetensors", "truncate"),
        pk.load_adapter(t / "adapter")), "adapter_model.safetensors"),
    ("adapter newer format", lambda t, m: (_bump_version(_saved_adapter(t, m)),
                                           pk.load_adapter(t / "adapter")), "Upgrade promptkit"),
    ("unknown alias", lambda t, m: pk.create_adapter("lora", model="minilmm", task=TASK).fit(
        pk.testing.toy_classification(4)), "Did you mean 'minilm'"),
    ("hub id offline", lambda t, m: pk.models.resolve("someone/not-here"), "HF_HUB_OFFLINE"),
    ("unknown adapter", lambda t, m: pk.create_adapter("lorra"), "Did you mean"),
    ("r=0", lambda t, m: pk.create_adapter("lora", task=TASK, r=0), "r:"),
    ("negative learning rate", lambda t, m: pk.create_adapter("full", task=TASK,
                                                              learning_rate=-1e-3),
     "learning_rate"),
    ("top_k=0", lambda t, m: pk.create_adapter("knn", task=TASK, top_k=0), "top_k"),
    ("epochs=0", lambda t, m: pk.create_adapter("full", task=TASK, epochs=0), "epochs"),
    ("unknown metric", lambda t, m: pk.Evaluator(TASK, metrics=["acuracy"]), "Did you mean"),
    ("unknown setting", lambda t, m: pk.create_adapter("lora", task=TASK, rank=8), "rank"),
    ("missing artifact", lambda t, m: pk.load_adapter(t / "nothing-here"), "No artifact"),
]


def _bump_version(path: Path) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("name", "action", "words"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gives_clear_error(name, action, words, tmp_path, tiny_bert, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(PromptkitError) as info:
        action(work, tiny_bert)
    assert words.lower() in str(info.value).lower(), str(info.value)
    assert not [p for p in work.rglob("*") if ".tmp-" in p.name], "nothing half-written"


def test_write_error_mid_save_keeps_previous(tmp_path, tiny_bert, monkeypatch):
    """A full disk (simulated: the writer raises ENOSPC) leaves the old knowledge base intact."""
    kb_dir = _saved_kb(tmp_path, tiny_bert)
    kb = pk.KnowledgeBase.load(kb_dir)
    from promptkit.knowledge.stores.faiss_store import FaissStore

    original = FaissStore._append

    def full_disk(self, vectors, ids):
        original(self, vectors[:1], ids[:1])  # part of the rows reach the disk, then it is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FaissStore, "_append", full_disk)
    with pytest.raises(pk.errors.ArtifactError, match="No space left"):
        kb.add(["gamma", "delta"])
    monkeypatch.undo()
    reopened = pk.KnowledgeBase.load(kb_dir, verify=True)
    assert len(reopened) == 2
    reopened.add(["epsilon"])  # the half-written tail is overwritten, not mixed in
    again = pk.KnowledgeBase.load(kb_dir, verify=True)
    assert {h.text for h in again.search("anything", k=5)} == {"alpha", "beta", "epsilon"}


# ---- fuzzing -----------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.text(max_size=300))
def test_template_rendering_fails_only_with_promptkit_errors(source):
    with contextlib.suppress(PromptkitError):
        Template.from_string(source).render({"text": "x", "labels": ["a", "b"]})


@FUZZ
@given(st.text(max_size=400))
def test_template_check_fails_only_with_findings(tmp_path_factory, source):
    from promptkit.template_check import check_template

    path = tmp_path_factory.mktemp("fuzz") / "t.j2"
    path.write_text(source, encoding="utf-8")
    for finding in check_template(path):
        assert finding.line >= 1 and finding.severity in ("error", "warning")


@FUZZ
@given(st.binary(max_size=400))
def test_manifest_parsing_of_arbitrary_bytes(tmp_path_factory, blob):
    root = tmp_path_factory.mktemp("art")
    with write_artifact(root / "a", kind="thing") as staging:
        (staging / "x").write_text("x")
    (root / "a" / "manifest.json").write_bytes(blob)
    with contextlib.suppress(PromptkitError):
        read_manifest(root / "a")


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(sorted(loaders.names())))
def test_document_loaders_on_arbitrary_bytes(blob, suffix):
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        return  # the folder scan skips non-UTF-8 files before a loader sees them
    try:
        for body, meta in loaders.get(suffix)(text, f"fuzz{suffix}"):
            assert isinstance(body, str) and isinstance(meta, dict)
    except PromptkitError:
        pass


@FUZZ
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=600),
       st.integers(8, 40), st.integers(0, 10))
def test_chunks_cover_document_within_limit(text, limit, overlap):
    def count(piece: str) -> int:
        return len(piece.split()) + len(piece) // 20

    chunks = chunk_text(text, count, ChunkingConfig(max_tokens=limit, overlap=overlap))
    for chunk in chunks:
        assert text[chunk.start: chunk.end] == chunk.text
        assert count(chunk.text) <= limit
    covered = set()
    for chunk in chunks:
        covered.update(range(chunk.start, chunk.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2),
                          st.floats(0, 1, allow_nan=False)), max_size=50))
def test_metrics_on_arbitrary_inputs(rows):
    refs = np.array([r[0] for r in rows], dtype=np.int64)
    preds = np.array([r[1] for r in rows], dtype=np.int64)
    p = np.array([r[2] for r in rows]).reshape(-1, 1)
    scores = np.hstack([p, (1 - p) / 2, (1 - p) / 2]) + 1e-9
    batch = ClassificationBatch(refs, preds, ["a", "b", "c"], scores)
    values = {name: metrics.get(name).compute(batch)
              for name in ("accuracy", "f1_macro", "precision_weighted", "recall_micro",
                           "log_loss", "ece", "roc_auc")}
    if not rows:  # nothing to measure: no metric may invent a value
        assert all(np.isnan(v) for v in values.values()), values
        return
    from sklearn.metrics import f1_score, log_loss

    assert values["accuracy"] == pytest.approx(np.mean(refs == preds))
    assert values["recall_micro"] == pytest.approx(np.mean(refs == preds))  # micro = accuracy
    assert values["f1_macro"] == pytest.approx(
        f1_score(refs, preds, average="macro", zero_division=0))  # labels present, as sklearn
    assert 0 <= values["precision_weighted"] <= 1 and 0 <= values["ece"] <= 1
    normalized = scores / scores.sum(1, keepdims=True)
    assert values["log_loss"] == pytest.approx(log_loss(refs, normalized, labels=[0, 1, 2]),
                                               rel=1e-4)
    assert np.isnan(values["roc_auc"]) or 0 <= values["roc_auc"] <= 1
    texts = GenerationBatch([str(r[2]) for r in rows], [str(r[0]) for r in rows])
    same = np.mean([str(r[2]) == str(r[0]) for r in rows])
    assert metrics.get("exact_match").compute(texts) == pytest.approx(same)
    assert 0 <= metrics.get("token_f1").compute(texts) <= 1


def test_docstore_file_is_plain_sqlite(tmp_path, tiny_bert):
    kb_dir = _saved_kb(tmp_path, tiny_bert)
    with sqlite3.connect(kb_dir / "docstore.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == 2
    assert not list(kb_dir.rglob("*.pkl")) and not list(kb_dir.rglob("*.pickle"))

"""ONNX export: int8 classifiers that predict with onnxruntime, checked against torch on load."""

from __future__ import annotations

import json

import pytest

import promptkit as pk
from promptkit.export import check_agreement
from promptkit.testing import tiny_model, toy_classification

pytest.importorskip("onnxruntime")

FAST_SETTINGS = {"learning_rate": 1e-4, "logging_steps": 100, "save_checkpoints": False}


@pytest.fixture(scope="module")
def classifier():
    task = pk.Task.classification(["negative", "positive"])
    adapter = pk.create_adapter("full", model=tiny_model("bert"), task=task, epochs=3,
                                batch_size=8, learning_rate=1e-3, logging_steps=100,
                                save_checkpoints=False)
    adapter.fit(toy_classification(48))
    return adapter


def test_int8_export_predicts_like_torch_and_is_checked_on_load(classifier, tmp_path):
    texts = [r["text"] for r in toy_classification(40, seed=3)]
    expected = classifier.predict(texts)
    classifier.export(tmp_path / "int8")
    assert (tmp_path / "int8" / "model.onnx").is_file()
    assert not (tmp_path / "int8" / "model").exists()  # no torch weights in the export
    loaded = pk.load_adapter(tmp_path / "int8")
    assert loaded.config.runtime == "onnx" and type(loaded.model_).__name__ == "OnnxClassifier"
    got = loaded.predict(texts)
    agree = sum(a.label == b.label for a, b in zip(got, expected, strict=True))
    assert agree >= 38  # int8 may flip an input that sits on the boundary
    worst = max(abs(a.scores["positive"] - b.scores["positive"])
                for a, b in zip(got, expected, strict=True))
    assert worst < 0.05
    reference = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert reference["quantize"] == "int8" and len(reference["samples"]) == 4


def test_fp32_export_is_exact(classifier, tmp_path):
    texts = [r["text"] for r in toy_classification(16, seed=5)]
    expected = classifier.predict(texts)
    classifier.export(tmp_path / "fp32", quantize=None)
    got = pk.load_adapter(tmp_path / "fp32").predict(texts)
    for a, b in zip(got, expected, strict=True):
        assert a.scores["positive"] == pytest.approx(b.scores["positive"], abs=1e-5)


def test_an_export_that_computes_differently_is_refused(classifier, tmp_path):
    classifier.export(tmp_path / "int8")
    loaded = pk.load_adapter(tmp_path / "int8")
    reference = dict(loaded.reference_)
    # as if the stored torch outputs were 0.2 away from what this runtime computes
    reference["probabilities"] = [{k: v + 0.2 for k, v in p.items()}
                                  for p in reference["probabilities"]]
    with pytest.raises(pk.errors.ArtifactError, match="differ from the exported torch"):
        check_agreement(loaded._predict, reference, tmp_path)
    assert check_agreement(loaded._predict, loaded.reference_, tmp_path) < 0.05


def test_lora_classifier_exports_merged(tmp_path):
    task = pk.Task.classification(["negative", "positive"])
    lora = pk.create_adapter("lora", model=tiny_model("bert"), task=task, epochs=3, batch_size=8,
                             learning_rate=5e-3, logging_steps=100, save_checkpoints=False)
    lora.fit(toy_classification(48))
    texts = [r["text"] for r in toy_classification(16, seed=7)]
    expected = [p.label for p in lora.predict(texts)]
    lora.export(tmp_path / "lora", quantize=None)
    assert [p.label for p in pk.load_adapter(tmp_path / "lora").predict(texts)] == expected


def test_what_cannot_be_exported_says_so(tmp_path):
    generator = pk.create_adapter("full", model=tiny_model("gpt2"),
                                  task=pk.Task.generation(template="closed_book_qa"), epochs=1,
                                  logging_steps=100, save_checkpoints=False)
    generator.fit([{"question": "q", "answer": "a"}] * 4)
    with pytest.raises(pk.errors.ConfigError, match="covers classifiers"):
        generator.export(tmp_path / "x")
    onnx = pk.create_adapter("full", model=tiny_model("bert"), runtime="onnx",
                             task=pk.Task.classification(["negative", "positive"]))
    with pytest.raises(pk.errors.ConfigError, match="fit with runtime 'torch'"):
        onnx.fit(toy_classification(8))


def test_onnx_embedder_matches_torch_and_builds_a_knowledge_base(tmp_path):
    import numpy as np

    from promptkit.export import export_embedder
    from promptkit.knowledge.embedder import Embedder, fingerprint

    source = tiny_model("bert")
    texts = [f"document {i} about {w}" for i, w in enumerate(["boats", "bread", "rivers"] * 8)]
    torch_vectors = Embedder(source, show_progress=False).encode(texts)
    exact = Embedder(str(export_embedder(source, tmp_path / "fp32", quantize=None)),
                     show_progress=False)
    assert exact.onnx is not None
    assert np.allclose(exact.encode(texts), torch_vectors, atol=1e-5)
    int8 = Embedder(str(export_embedder(source, tmp_path / "int8")), show_progress=False)
    assert np.sum(int8.encode(texts) * torch_vectors, axis=1).min() > 0.98
    # an export is another embedder: its vectors are never mixed with the torch model's
    assert fingerprint(str(tmp_path / "int8")) != fingerprint(source)
    kb = pk.KnowledgeBase.build([{"text": t} for t in texts], embedder=str(tmp_path / "int8"),
                                path=tmp_path / "kb")
    # int8 activations are scaled per batch, so a text meets itself at cosine near, not at, 1
    assert kb.search(texts[4], k=1)[0].score > 0.95
    reloaded = pk.KnowledgeBase.load(tmp_path / "kb")
    assert reloaded.embedder.onnx is not None
    moved = pk.KnowledgeBase.build([{"text": t} for t in texts], embedder=source,
                                   path=tmp_path / "kb-torch")
    moved.reembed(str(tmp_path / "int8"))
    assert moved.embedder.onnx is not None and moved.search(texts[7], k=1)[0].score > 0.95


def test_export_from_the_command_line(classifier, tmp_path):
    import subprocess
    import sys

    classifier.save(tmp_path / "saved")

    def promptkit(*args):
        return subprocess.run([sys.executable, "-m", "promptkit", *args], capture_output=True,
                              text=True, timeout=300)

    done = promptkit("export", str(tmp_path / "saved"), "--out", str(tmp_path / "onnx"))
    assert done.returncode == 0, done.stderr
    assert "promptkit serve" in done.stdout and (tmp_path / "onnx" / "model.onnx").is_file()
    texts = [r["text"] for r in toy_classification(8, seed=11)]
    assert [p.label for p in pk.load_adapter(tmp_path / "onnx").predict(texts)] == [
        p.label for p in classifier.predict(texts)]
    done = promptkit("export", tiny_model("bert"), "--embedder", "--out", str(tmp_path / "emb"),
                     "--quantize", "none")
    assert done.returncode == 0 and "embedder=" in done.stdout, done.stderr
    wrong = promptkit("export", str(tmp_path / "saved"), "--out", str(tmp_path / "x"),
                      "--quantize", "int4")
    assert wrong.returncode != 0 and "int4" in wrong.stderr


def test_promptkit_serve_answers_with_the_onnx_export(classifier, tmp_path):
    import httpx

    from promptkit.testing import serving

    classifier.export(tmp_path / "int8")
    texts = [r["text"] for r in toy_classification(6, seed=13)]
    local = pk.load_adapter(tmp_path / "int8").predict(texts)
    with serving(tmp_path / "int8", options=["--name", "sentiment"]) as url:
        answer = httpx.post(url + "/predict", json={"model": "sentiment", "input": texts},
                            timeout=60).json()
    labels = [p["label"] for p in answer["predictions"]]
    assert labels == [p.label for p in local]


@pytest.mark.slow
def test_minilm_export_fills_the_token_types_its_graph_takes(tmp_path):
    adapter = pk.create_adapter("full", model="minilm", task=pk.Task.classification(
        ["negative", "positive"]), epochs=1, batch_size=8, max_length=32, **FAST_SETTINGS)
    adapter.fit(toy_classification(16))
    adapter.export(tmp_path / "minilm", quantize=None)
    loaded = pk.load_adapter(tmp_path / "minilm")  # its check on load predicts the samples
    assert "token_type_ids" in loaded.model_.inputs  # BERT graphs take them; rows carry none
    texts = [r["text"] for r in toy_classification(8, seed=2)]
    for a, b in zip(loaded.predict(texts), adapter.predict(texts), strict=True):
        assert a.scores["positive"] == pytest.approx(b.scores["positive"], abs=1e-4)

"""The device and dtype settings: validated, honoured, and clear when a device is missing."""

from __future__ import annotations

import pytest
import torch

import promptkit as pk
from promptkit.devices import resolve_device, to_device


def test_device_setting_is_validated(sentiment_task):
    with pytest.raises(pk.errors.ConfigError, match="device"):
        pk.create_adapter("full", task=sentiment_task, device="gpu0")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
def test_asking_for_cuda_without_one_says_so(tiny_bert, sentiment_task, toy_data):
    adapter = pk.create_adapter("full", model=tiny_bert, task=sentiment_task, device="cuda")
    with pytest.raises(pk.errors.ConfigError, match="no CUDA device"):
        adapter.fit(toy_data[:8])


def test_bfloat16_weights(tiny_gpt2, sentiment_task, tiny_bert, toy_data):
    prompt = pk.create_adapter("prompt", model=tiny_gpt2, task=sentiment_task, chat=False,
                               dtype="bfloat16", device="cpu")
    prompt._ensure_model()
    assert next(prompt._model.parameters()).dtype == torch.bfloat16
    scores = prompt.predict(["good film"])[0].scores
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
    full = pk.create_adapter("full", model=tiny_bert, task=sentiment_task, dtype="bfloat16",
                             device="cpu", epochs=1, batch_size=8)
    full.fit(toy_data[:16])
    assert next(full.model_.parameters()).dtype == torch.bfloat16
    assert len(full.predict(toy_data[:3])) == 3


def test_batches_follow_the_model():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "note": "kept"}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["input_ids"].device.type == "cpu" and moved["note"] == "kept"


def test_gpu_cases_run_on_the_cpu():
    """The GPU suite's cases build, fit and predict here too, so it cannot rot unnoticed on a
    machine without CUDA (the comparison itself needs a GPU: make test-gpu)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "gpu"))
    try:
        import test_gpu
    finally:
        sys.path.pop(0)
    for name, (make, kind) in test_gpu.CASES.items():
        predictions = test_gpu._run(make, "cpu", kind)
        assert predictions and all(p.label or p.text is not None for p in predictions), name

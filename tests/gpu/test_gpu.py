"""Every adapter fits and predicts on a CUDA device, matching the CPU to 1e-3 (skipped without
CUDA; `make test-gpu` runs this folder and fails if there is no GPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import promptkit as pk
from promptkit.adapters import adapters
from promptkit.testing import tiny_model, toy_classification, toy_generation

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# no dropout: CPU and GPU draw dropout masks from different generators
TRAIN = {"epochs": 2, "batch_size": 8, "logging_steps": 100, "dropout": 0.0}


def _cls() -> Any:
    return pk.Task.classification(["negative", "positive"], template="sentiment")


def _qa() -> Any:
    return pk.Task.generation(template="closed_book_qa")


def _trained(name: str, model: str, task: Any, **extra: Any) -> Any:
    def make(device: str) -> Any:
        return pk.create_adapter(name, model=tiny_model(model), task=task(), device=device,
                                 **TRAIN, **extra)
    return make


def _prompt(task: Any, **extra: Any) -> Any:
    def make(device: str) -> Any:
        return pk.create_adapter("prompt", model=tiny_model("gpt2"), task=task(), device=device,
                                 **extra)
    return make


def _knn(device: str) -> Any:
    return pk.create_adapter("knn", task=_cls(), embedder=tiny_model("bert"), device=device)


def _retrieval(device: str) -> Any:
    kb = pk.KnowledgeBase.build(["a great film is good", "a bad film is awful"],
                                embedder=tiny_model("bert"), device=device)
    base = pk.create_adapter("prompt", model=tiny_model("gpt2"), device=device, max_new_tokens=4,
                             task=pk.Task.generation(template="rag_qa"))
    return pk.create_adapter("retrieval", base=base, knowledge=kb, top_k=2, device=device)


CASES = {
    "full-cls": (_trained("full", "bert", _cls, learning_rate=1e-3), "cls"),
    "full-gen": (_trained("full", "gpt2", _qa, learning_rate=1e-3), "gen"),
    "lora-cls": (_trained("lora", "bert", _cls, learning_rate=1e-2, lora_dropout=0.0), "cls"),
    "lora-gen": (_trained("lora", "gpt2", _qa, learning_rate=1e-2, lora_dropout=0.0), "gen"),
    "prompt_tuning": (_trained("prompt_tuning", "gpt2", _cls, learning_rate=5e-2,
                               num_virtual_tokens=4), "cls"),
    "prefix_tuning": (_trained("prefix_tuning", "bert", _cls, learning_rate=1e-2,
                               num_virtual_tokens=4), "cls"),
    "p_tuning": (_trained("p_tuning", "gpt2", _cls, learning_rate=1e-2, num_virtual_tokens=4),
                 "cls"),
    "ia3": (_trained("ia3", "bert", _cls, learning_rate=5e-2), "cls"),
    "prompt-cls": (_prompt(_cls, shots=2, calibrate=True), "cls"),
    "prompt-gen": (_prompt(_qa, max_new_tokens=4), "gen"),
    "knn": (_knn, "cls"),
    "retrieval": (_retrieval, "gen"),
}


def test_every_adapter_has_a_gpu_case():
    covered = {name.split("-")[0] for name in CASES}
    assert set(adapters.names()) <= covered


def _run(make: Any, device: str, kind: str) -> list[Any]:
    if kind == "cls":
        train, inputs = toy_classification(32), toy_classification(6, seed=1)
    else:
        train, inputs = toy_generation(16), [{"question": r["question"]} for r in toy_generation(4)]
    adapter = make(device)
    adapter.fit(train)
    return adapter.predict(inputs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gpu_predictions_match_cpu(case: str) -> None:
    make, kind = CASES[case]
    cpu, gpu = _run(make, "cpu", kind), _run(make, "cuda", kind)
    for a, b in zip(cpu, gpu, strict=True):
        if kind == "cls":
            assert a.label == b.label
            assert a.scores == pytest.approx(b.scores, abs=1e-3)
        else:
            assert a.text == b.text


def test_scoring_memory_is_bounded_on_gpu(tmp_path) -> None:
    """Scoring 64 prompts x 8 words takes the memory of 16 prompts x 8 words (batch_size 16)."""
    template = tmp_path / "eight.j2"
    template.write_text("{# ---\ntask: classification\nverbalizer: {negative: [terrible film, "
                        "bad movie, awful, meh], positive: [great, fine, good, ok]}\n--- #}\n"
                        "Review: {{ text }}\nSentiment:")
    task = pk.Task.classification(["negative", "positive"], template=str(template))
    adapter = pk.create_adapter("prompt", model=tiny_model("gpt2"), task=task, device="cuda",
                                batch_size=16, chat=False)
    adapter._ensure_model()

    def peak(n: int) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        adapter._score_all([f"Review: film number {i}\nSentiment:" for i in range(n)])
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    small, large = peak(16), peak(64)
    print(f"peak scoring memory: 16x8 {small} bytes, 64x8 {large} bytes")
    assert large <= small * 1.1 + 2**20

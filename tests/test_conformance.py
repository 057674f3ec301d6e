"""Every registered adapter passes promptkit.testing.check_adapter on tiny random models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import promptkit as pk
from promptkit.adapters import adapters
from promptkit.testing import (
    check_adapter,
    tiny_model,
    toy_classification,
    toy_generation,
    toy_pairs,
)

FAST = {"epochs": 15, "batch_size": 8, "max_new_tokens": 4, "logging_steps": 50}


def _cls() -> Any:
    return pk.Task.classification(["negative", "positive"], template="sentiment")


def _qa() -> Any:
    return pk.Task.generation(template="closed_book_qa")


def _trainable(name: str, lr: float, **extra: Any) -> list[tuple[str, Callable[[], Any], str]]:
    cases = []
    for model, task, data in [("bert", _cls, "cls"), ("gpt2", _qa, "gen"), ("t5", _qa, "gen")]:
        if name in ("prompt_tuning", "p_tuning") and data == "cls":
            # a frozen random 2-layer BERT gives near-identical [CLS] vectors for every input;
            # GPT-2's last-token state carries the signal a soft prompt can steer
            model = "gpt2"
        cases.append((f"{model}-{data}", lambda m=model, t=task: pk.create_adapter(
            name, model=tiny_model(m), task=t(), learning_rate=lr, **FAST, **extra), data))
    return cases


def _retrieval_cases() -> list[tuple[str, Callable[[], Any], str]]:
    def demonstrations() -> Any:
        base = pk.create_adapter("prompt", model=tiny_model("gpt2"), task=_cls(), shots=2)
        return pk.create_adapter("retrieval", base=base, demonstrations=2,
                                 embedder=tiny_model("bert"))

    def inject() -> Any:
        kb = pk.KnowledgeBase.build(["a great film is good", "a bad film is awful"],
                                    embedder=tiny_model("bert"))
        base = pk.create_adapter("prompt", model=tiny_model("gpt2"),
                                 task=pk.Task.generation(template="rag_qa"), max_new_tokens=3)
        return pk.create_adapter("retrieval", base=base, knowledge=kb, top_k=2)

    return [("demonstrations-gpt2", demonstrations, "cls"), ("inject-gpt2", inject, "gen")]


def _pairs(name: str, kind: str, lr: float) -> tuple[str, Callable[[], Any], str]:
    task = pk.Task.retrieval() if kind == "retrieval" else pk.Task.rerank()
    return (f"bert-{kind}", lambda: pk.create_adapter(
        name, model=tiny_model("bert"), task=task, learning_rate=lr, hard_negatives=2,
        epochs=3, batch_size=8, logging_steps=50), "pairs")


def _distill() -> Any:
    teacher = pk.create_adapter("full", model=tiny_model("bert"), task=_cls(), learning_rate=1e-3,
                                **FAST)
    teacher.fit(toy_classification(48))
    return pk.create_adapter("distill", teacher=teacher, student=f"{tiny_model('bert')}-l1",
                             task=_cls(), learning_rate=1e-3, **FAST)


CASES: dict[str, list[tuple[str, Callable[[], Any], str]]] = {
    "distill": [("bert-l1-cls", _distill, "cls")],
    "full": [*_trainable("full", 0.001), _pairs("full", "retrieval", 0.001), _pairs("full", "rerank", 0.001)],
    "lora": [*_trainable("lora", 0.01), _pairs("lora", "retrieval", 0.01), _pairs("lora", "rerank", 0.01)],
    "prompt_tuning": _trainable("prompt_tuning", 5e-2, num_virtual_tokens=4),
    "prefix_tuning": _trainable("prefix_tuning", 1e-2, num_virtual_tokens=4),
    "p_tuning": _trainable("p_tuning", 1e-2, num_virtual_tokens=4),
    "ia3": _trainable("ia3", 5e-2),
    "prompt": [
        ("gpt2-cls", lambda: pk.create_adapter("prompt", model=tiny_model("gpt2"), task=_cls(),
                                               shots=2, calibrate=True), "cls"),
        ("t5-cls", lambda: pk.create_adapter("prompt", model=tiny_model("t5"), task=_cls()),
         "cls"),
        ("gpt2-gen", lambda: pk.create_adapter("prompt", model=tiny_model("gpt2"), task=_qa(),
                                               max_new_tokens=3), "gen"),
        ("t5-gen", lambda: pk.create_adapter("prompt", model=tiny_model("t5"), task=_qa(),
                                             max_new_tokens=3), "gen"),
    ],
    "retrieval": _retrieval_cases(),
    "knn": [("bert", lambda: pk.create_adapter("knn", task=_cls(), embedder=tiny_model("bert"),
                                               top_k=3), "cls")],
}

PARAMS = [pytest.param(name, case, id=f"{name}-{label}")
          for name in adapters.names() for label, *_ in CASES.get(name, [("missing",)])
          for case in [label]]


def test_every_registered_adapter_has_cases():
    assert set(adapters.names()) <= set(CASES), "add conformance cases for new adapters"


@pytest.mark.parametrize(("name", "label"), PARAMS)
def test_conformance(name: str, label: str, tmp_path) -> None:
    make, kind = next((m, k) for lbl, m, k in CASES[name] if lbl == label)
    if kind == "cls":
        train, inputs = toy_classification(48), toy_classification(6, seed=1)
    elif kind == "pairs":
        train, inputs = toy_pairs(24), toy_pairs(6)
    else:
        train, inputs = toy_generation(24), toy_generation(4)
        if name == "retrieval":  # the context comes from the knowledge base
            inputs = [{"question": r["question"]} for r in inputs]
    measured = check_adapter(make, train, inputs, tmp_path)
    if adapters.get(name).trains:
        assert measured["train_loss"] < measured["initial_loss"]


def test_prefix_tuning_classifier_attends_to_its_prefix_and_ignores_padding():
    import torch

    adapter = pk.create_adapter("prefix_tuning", model=tiny_model("bert"), task=_cls(),
                                num_virtual_tokens=4, **FAST)
    adapter.fit(toy_classification(8))
    rows = [{"text": "good"}, {"text": "a much longer review that forces the first to pad"}]
    alone = adapter.predict(rows[:1])[0].scores
    padded = adapter.predict(rows)[0].scores  # same batch as a longer input: padded
    assert alone == pytest.approx(padded, abs=1e-5)
    with torch.no_grad():  # the prefix reaches the attention: new prefixes, new scores
        prompt = adapter.model_.prompt_encoder["default"].embedding.weight
        prompt.copy_(torch.randn_like(prompt) * 3)
    assert adapter.predict(rows[:1])[0].scores != pytest.approx(alone, abs=1e-4)


def test_prefix_tuning_on_a_model_without_a_cache_says_why():
    import torch

    from promptkit.adapters.peft_methods import PrefixTuningAdapter
    from promptkit.errors import ConfigError

    class NoCache(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    adapter = pk.create_adapter("prefix_tuning", model=tiny_model("bert"), task=_cls())
    with pytest.raises(ConfigError, match="past_key_values.*p_tuning"):
        PrefixTuningAdapter._peft_config(adapter, "SEQ_CLS", NoCache())


TRAINABLE = [name for name in adapters.names() if adapters.get(name).trains]


@pytest.mark.parametrize("name", TRAINABLE)
def test_same_seed_same_predictions(name: str) -> None:
    """Two fits with one seed give identical predictions (every trainable adapter)."""
    label, make, kind = CASES[name][0]
    train = toy_classification(24) if kind == "cls" else toy_generation(12)
    inputs = toy_classification(4, seed=1) if kind == "cls" else toy_generation(4)
    import random

    import torch

    runs = []
    for disturb in (0, 1):
        random.random(), torch.rand(disturb + 1)  # global RNG state differs between the fits
        adapter = make()
        adapter.fit(train)
        runs.append([p.to_dict() for p in adapter.predict(inputs)])
    assert runs[0] == runs[1], f"{name} ({label}) is not reproducible with a fixed seed"
    assert TRAINABLE, "no trainable adapters registered"

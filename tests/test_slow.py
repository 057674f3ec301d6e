"""The packaged real models, offline. Marked slow; still part of `make test`."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import promptkit as pk

pytestmark = pytest.mark.slow


def test_minilm_encodes_384_normalized():
    from promptkit.knowledge.embedder import get_embedder

    vectors = get_embedder("minilm").encode(["A sentence to encode."])
    assert vectors.shape == (1, 384)
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)


def test_smollm2_knows_paris():
    task = pk.Task.generation(template="generate")
    adapter = pk.create_adapter("prompt", task=task, max_new_tokens=16)
    answer = adapter.predict([{"prompt": "What is the capital of France?"}])[0].text
    assert "Paris" in answer


def test_smollm2_zero_shot_beats_majority():
    test = pk.datasets.load("rotten_tomatoes")["test"][:200]
    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    predictions = pk.create_adapter("prompt", task=task, batch_size=16).predict(test)
    accuracy = np.mean([p.label == r["label"] for p, r in zip(predictions, test, strict=True)])
    majority = max(Counter(r["label"] for r in test).values()) / len(test)
    assert accuracy > majority + 0.05, (accuracy, majority)


def test_rotten_tomatoes_split_is_fixed():
    import hashlib
    import json

    test = pk.datasets.load("rotten_tomatoes")["test"]
    digest = hashlib.sha256(json.dumps(test).encode()).hexdigest()
    assert len(test) == 1276
    assert digest == "71ec841101e0fa7764535a52fd49ce4132c42a9ec340e1cf3d1c793de3a33935"


def test_python_faq_dense_retrieval():
    kb = pk.KnowledgeBase.build(pk.datasets.knowledge_dir("python-faq"), embedder="minilm")
    faq = [q for split in pk.datasets.load("python_faq").values() for q in split]  # untuned
    hits = kb.search_many([q["question"] for q in faq], k=10)
    found = [q["passage_id"] in [h.metadata.get("heading") for h in row]
             for q, row in zip(faq, hits, strict=True)]
    assert np.mean(found) > 0.85


def test_smollm2_multi_token_scores_equal_a_full_forward_pass():
    from test_prompt_scoring import full_pass_scores

    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    adapter = pk.create_adapter("prompt", task=task, scoring="sum", batch_size=4)
    adapter._ensure_model()
    prompts = adapter.prompts([{"text": "A gripping, beautifully shot film."},
                               {"text": "Dull."}])
    words = [" positive", " negative", " a complete waste of time", "ly good"]
    found = adapter._score_causal(prompts, words)
    for got, want in zip(found, full_pass_scores(adapter, prompts, words), strict=True):
        assert got == pytest.approx(want, abs=1e-4)


def test_lora_with_retrieval_beats_closed_book_on_faq_test_questions():
    """Retrieval-augmented LoRA against closed-book LoRA, same budget, 16 test questions."""
    from promptkit.metrics import strip_citations, token_f1

    faq = pk.datasets.load("python_faq")
    kb = pk.KnowledgeBase.build(pk.datasets.knowledge_dir("python-faq"),
                                chunking={"max_tokens": 128})
    train, questions = faq["train"][:48], faq["test"][:16]
    settings = {"model": "smollm2-135m-instruct", "epochs": 2, "batch_size": 8,
                "learning_rate": 1e-3, "max_length": 384, "max_new_tokens": 40,
                "logging_steps": 50, "save_checkpoints": False}
    rag_task = pk.Task.generation(template="rag_qa", prompt_fields=["question"])
    rag = pk.create_adapter("retrieval", knowledge=kb, top_k=2, distinct="heading",
                            gold_field="passage_id",
                            base=pk.create_adapter("lora", task=rag_task, **settings))
    closed = pk.create_adapter("lora", task=pk.Task.generation(template="closed_book_qa"),
                               **settings)
    scores = {}
    for name, adapter in {"rag": rag, "closed": closed}.items():
        adapter.fit(train)
        answers = adapter.predict([{"question": q["question"]} for q in questions])
        scores[name] = [token_f1(q["answer"], strip_citations(a.text, len(a.sources or [])))
                        for a, q in zip(answers, questions, strict=True)]
    assert np.mean(scores["rag"]) > np.mean(scores["closed"]) + 0.05, scores
    assert sum(r > c for r, c in zip(scores["rag"], scores["closed"], strict=True)) > sum(
        r < c for r, c in zip(scores["rag"], scores["closed"], strict=True))

"""Retrieval-augmented fine-tuning: passages at fit time, the gold passage kept with probability p
(RAFT), and a saved RAG adapter that references its knowledge base and reloads the same."""

from __future__ import annotations

import shutil

import pytest

import promptkit as pk

WORDS = ["good", "bad", "film", "plot", "story", "acting"]


@pytest.fixture()
def faq(tmp_path, tiny_bert):
    records = [{"text": f"the {w} answer is {w} {w}", "heading": f"p{i}"}
               for i, w in enumerate(WORDS)]
    kb = pk.KnowledgeBase.build(records, embedder=tiny_bert, path=tmp_path / "kb")
    train = [{"question": f"what is {w}", "answer": w, "passage_id": f"p{i}"}
             for i, w in enumerate(WORDS)] * 2
    return kb, train


def rag(kb, tiny_gpt2, **settings):
    base = pk.create_adapter("lora", model=tiny_gpt2, task=pk.Task.generation(template="rag_qa"),
                             epochs=2, batch_size=4, learning_rate=1e-2, max_new_tokens=4,
                             logging_steps=100)
    return pk.create_adapter("retrieval", base=base, knowledge=kb, top_k=2,
                             gold_field="passage_id", **settings)


def seen_by_base(adapter, train):
    seen = []
    fit = adapter.base_.fit
    adapter.base_.fit = lambda records, eval_data=None: seen.extend(records) or fit(records,
                                                                                    eval_data)
    adapter.fit(train)
    return seen


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_gold_passage_kept_with_probability(faq, tiny_gpt2, probability):
    kb, train = faq
    adapter = rag(kb, tiny_gpt2, gold_probability=probability)
    seen = seen_by_base(adapter, train)
    assert len(seen) == len(train)
    for record in seen:
        headings = [p["metadata"]["heading"] for p in record["passages"]]
        assert len(headings) == 2  # top_k passages whatever happens to the gold one
        assert (record["passage_id"] in headings) == (probability == 1.0)


def test_gold_passage_sits_where_retrieval_put_it(faq, tiny_gpt2):
    kb, train = faq
    seen = seen_by_base(rag(kb, tiny_gpt2, gold_probability=1.0), train)
    for record in seen:
        ranked = [h.metadata["heading"] for h in kb.search(record["question"], k=4)]
        rank = ranked.index(record["passage_id"]) if record["passage_id"] in ranked else 9
        headings = [p["metadata"]["heading"] for p in record["passages"]]
        assert headings.index(record["passage_id"]) == min(rank, 1)  # top_k = 2: last at most
        if rank < 2:  # retrieval found it in the top 2: exactly what prediction will see
            assert headings == ranked[:2]


def test_training_answers_cite_the_gold_passage(faq, tiny_gpt2):
    kb, train = faq
    for record in seen_by_base(rag(kb, tiny_gpt2, gold_probability=1.0, cite=True), train):
        headings = [p["metadata"]["heading"] for p in record["passages"]]
        number = headings.index(record["passage_id"]) + 1
        assert record["answer"].endswith(f" [{number}]")
        assert record["answer"].removesuffix(f" [{number}]") in WORDS
    seen = seen_by_base(rag(kb, tiny_gpt2, gold_probability=0.0, cite=True), train)
    assert all(r["answer"] in WORDS for r in seen)  # no gold passage shown: nothing to cite
    seen = seen_by_base(rag(kb, tiny_gpt2, gold_probability=1.0), train)  # the default
    assert all(r["answer"] in WORDS for r in seen)


def test_gold_probability_mixes(faq, tiny_gpt2):
    kb, train = faq
    seen = seen_by_base(rag(kb, tiny_gpt2, gold_probability=0.5), train * 4)
    with_gold = sum(r["passage_id"] in [p["metadata"]["heading"] for p in r["passages"]]
                    for r in seen)
    assert 0.25 * len(seen) < with_gold < 0.75 * len(seen)


def test_rag_lora_reloads_to_the_same_answers(faq, tiny_gpt2, tmp_path):
    kb, train = faq
    adapter = rag(kb, tiny_gpt2)
    adapter.fit(train, eval_data=train[:4])
    questions = [{"question": r["question"]} for r in train[:6]]
    answers = [(p.text, [s["source"] for s in p.sources]) for p in adapter.predict(questions)]
    adapter.save(tmp_path / "rag")
    assert (tmp_path / "rag" / "knowledge.json").is_file()
    assert not (tmp_path / "rag" / "knowledge").exists()  # referenced, not copied
    again = pk.load_adapter(tmp_path / "rag")
    assert [(p.text, [s["source"] for s in p.sources]) for p in again.predict(questions)] == answers
    shutil.rmtree(tmp_path / "kb")
    with pytest.raises(pk.errors.ArtifactError, match="not there any more"):
        pk.load_adapter(tmp_path / "rag")

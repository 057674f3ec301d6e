"""Retrieval and rerank tasks: adapted embedders, trained rerankers, re-embedding, fusion."""

from __future__ import annotations

import numpy as np
import pytest

import promptkit as pk
from promptkit.errors import KnowledgeBaseError
from promptkit.testing import TOPICS, toy_pairs

FIT = {"epochs": 3, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 50}


@pytest.fixture(scope="module")
def sections():
    """A knowledge base of six topic sections; 'river' has two chunks."""
    records = [{"text": text, "heading": topic, "source": f"{topic}.md"}
               for topic, text in TOPICS.items()]
    records.append({"text": "the river floods the meadow every spring", "heading": "river",
                    "source": "river2.md"})  # a section's first chunk: lowest (source, start)
    return records


@pytest.fixture(scope="module")
def embedder(tiny_bert, tmp_path_factory):
    adapter = pk.create_adapter("full", model=tiny_bert, task=pk.Task.retrieval(), **FIT)
    adapter.fit(toy_pairs(24))
    path = tmp_path_factory.mktemp("embedder") / "adapter"
    adapter.save(path)
    return adapter, path


@pytest.fixture(scope="module")
def reranker(tiny_bert, sections, tmp_path_factory):
    kb = pk.KnowledgeBase.build(sections, embedder=tiny_bert)
    adapter = pk.create_adapter("full", model=tiny_bert, task=pk.Task.rerank(),
                                negatives_from=kb, negatives_embedder=tiny_bert, **FIT)
    adapter.fit(toy_pairs(24))
    path = tmp_path_factory.mktemp("reranker") / "adapter"
    adapter.save(path)
    return adapter, path


def test_adapted_embedder_is_a_plain_sentence_transformers_folder(embedder):
    from sentence_transformers import SentenceTransformer

    adapter, path = embedder
    plain = SentenceTransformer(str(path / "model"))
    pair = toy_pairs(1)[0]
    vectors = plain.encode([pair["query"], pair["passage"]], normalize_embeddings=True)
    assert adapter.predict([pair])[0].scores["score"] == pytest.approx(
        float(vectors[0] @ vectors[1]), abs=1e-5)
    kb = pk.KnowledgeBase.build(list(TOPICS.values()), embedder=str(path))  # the adapter folder
    assert kb.embedder.model.encode([pair["passage"]], normalize_embeddings=True) == (
        pytest.approx(plain.encode([pair["passage"]], normalize_embeddings=True), abs=1e-5))


def test_reembed_replaces_every_vector_and_a_changed_embedder_is_caught(
        tiny_bert, embedder, tmp_path):
    import shutil

    _adapter, path = embedder
    kb = pk.KnowledgeBase.build(list(TOPICS.values()), embedder=tiny_bert, path=tmp_path / "kb")
    before = kb.store.all_vectors()[1].copy()
    kb.reembed(str(path), progress=False)
    _ids, after = kb.store.all_vectors()
    texts = kb.store.all_texts()[1]
    expected = kb.embedder.encode(texts, progress=False)
    assert np.allclose(after, expected, atol=1e-5) and not np.allclose(after, before, atol=1e-3)
    again = pk.KnowledgeBase.load(tmp_path / "kb")  # saved where it lives, new embedder named
    assert again.embedder_name == str(path)
    assert [h.id for h in again.search("tell me about chess", k=3)] == [
        h.id for h in kb.search("tell me about chess", k=3)]
    # retrain the embedder in place: the stored vectors no longer match its queries
    copy = tmp_path / "emb"
    shutil.copytree(path, copy)
    kb.reembed(str(copy), progress=False)
    other = pk.create_adapter("full", model=tiny_bert, task=pk.Task.retrieval(), **FIT, seed=3)
    other.fit(toy_pairs(12))
    shutil.rmtree(copy)
    other.save(copy)
    with pytest.raises(KnowledgeBaseError, match="reembed"):
        pk.KnowledgeBase.load(tmp_path / "kb").search("chess")


def test_hard_negatives_never_come_from_the_positive_section(tiny_bert, sections):
    from promptkit.adapters.pairs import PairTraining

    kb = pk.KnowledgeBase.build(sections, embedder=tiny_bert)
    adapter = pk.create_adapter("full", model=tiny_bert, task=pk.Task.retrieval(),
                                negatives_from=kb, hard_negatives=5)
    training = PairTraining(adapter.task, adapter.config)
    training.model = training._load(tiny_bert)
    pairs = toy_pairs(6)
    mined = training._mine([p["query"] for p in pairs], [p["passage"] for p in pairs])
    river = {TOPICS["river"], "the river floods the meadow every spring"}
    for pair, negatives in zip(pairs, mined, strict=True):
        assert len(negatives) == 5 and pair["passage"] not in negatives
        if pair["passage"] == TOPICS["river"]:  # the other river chunk is no negative
            assert not river & set(negatives)


def test_mining_reuses_the_knowledge_bases_vectors_while_they_are_current(tiny_bert, sections):
    from promptkit.adapters.pairs import PairTraining

    kb = pk.KnowledgeBase.build(sections, embedder=tiny_bert)
    adapter = pk.create_adapter("full", model=tiny_bert, task=pk.Task.retrieval(),
                                negatives_from=kb, hard_negatives=2)
    training = PairTraining(adapter.task, adapter.config)
    training.model = training._load(tiny_bert)
    encoded = []
    real = training._embedding_model

    def counting():
        encode = real()
        return lambda texts: encoded.append(len(texts)) or encode(texts)

    training._embedding_model = counting
    pairs = toy_pairs(6)
    queries, positives = [p["query"] for p in pairs], [p["passage"] for p in pairs]
    reused = training._mine(queries, positives)
    assert sum(encoded) == 2 * len(pairs)  # queries and positives; the corpus came from the KB
    training.trained = True  # changed weights: the stored vectors are stale, the corpus is embedded
    encoded.clear()
    fresh = training._mine(queries, positives)
    assert sum(encoded) == 2 * len(pairs) + kb.store.count()
    assert fresh == reused  # the weights did not really change here: the same negatives


def test_training_pairs_take_each_sections_first_chunk(tiny_bert, sections):
    kb = pk.KnowledgeBase.build(sections, embedder=tiny_bert)
    questions = [{"question": "boats?", "passage_id": "river"},
                 {"question": "dough?", "passage_id": "bread"},
                 {"question": "unknown?", "passage_id": "nowhere"}]
    with pytest.warns(UserWarning, match="1 of 3"):
        pairs = kb.training_pairs(questions)
    assert pairs == [{"query": "boats?", "passage": TOPICS["river"]},
                     {"query": "dough?", "passage": TOPICS["bread"]}]


def test_reranking_needs_a_trained_head(tiny_bert, sections, reranker):
    adapter, path = reranker
    kb = pk.KnowledgeBase.build(sections, embedder=tiny_bert)
    with pytest.raises(KnowledgeBaseError, match="no trained ranking head.*Task.rerank"):
        kb.search("river", k=3, rerank=tiny_bert)
    with pytest.raises(KnowledgeBaseError, match="ships no trained reranker"):
        kb.search("river", k=3, rerank=True)
    hits = kb.search("tell me about river", k=3, rerank=adapter, candidates=7)
    assert hits == sorted(hits, key=lambda h: -h.score)
    expected = [adapter.predict([{"query": "tell me about river", "passage": h.text}])[0]
                .scores["score"] for h in hits]
    assert [h.score for h in hits] == pytest.approx(expected, abs=1e-5)
    from_disk = kb.search("tell me about river", k=3, rerank=str(path), candidates=7)
    assert [h.id for h in from_disk] == [h.id for h in hits]


def test_retrieval_adapter_reranks_and_reloads(tiny_bert, tiny_gpt2, sections, reranker,
                                               tmp_path):
    adapter, _ = reranker
    kb = pk.KnowledgeBase.build(sections, embedder=tiny_bert)
    base = pk.create_adapter("prompt", model=tiny_gpt2, max_new_tokens=2,
                             task=pk.Task.generation(template="rag_qa"))
    rag = pk.create_adapter("retrieval", base=base, knowledge=kb, top_k=2, rerank=adapter,
                            candidates=6, distinct="heading")
    rag.fit([{"question": "river?", "answer": "boats"}])
    first = rag.predict([{"question": "tell me about river"}])[0]
    scores = [s["score"] for s in first.sources]
    assert scores == sorted(scores, reverse=True) and len(first.sources) == 2
    rag.save(tmp_path / "rag")
    again = pk.load_adapter(tmp_path / "rag").predict([{"question": "tell me about river"}])[0]
    assert again.text == first.text
    assert [s["text"] for s in again.sources] == [s["text"] for s in first.sources]
    assert [s["score"] for s in again.sources] == pytest.approx(scores, abs=1e-5)


def test_fusion_settings_and_tuning(tiny_bert, sections):
    kb = pk.KnowledgeBase.build(sections, embedder=tiny_bert)
    with pytest.raises(KnowledgeBaseError, match="Unknown fusion setting"):
        kb.search("river", hybrid={"bm25": 1})
    dense_only = kb.search("river boats", k=3, hybrid={"sparse_weight": 0})
    assert [h.id for h in dense_only] == [h.id for h in kb.search("river boats", k=3)]
    queries = ["boats river", "knight board", "night station", "dough baker"]
    gold = ["river", "chess", "train", "bread"]
    best, table = pk.knowledge.tune_fusion(kb, queries, gold, k=1)
    dense_row = next(r for r in table if r["sparse_weight"] == 0)
    chosen = next(r for r in table if r["sparse_weight"] == best.sparse_weight
                  and r["rrf_k"] == best.rrf_k)
    assert chosen["recall@1"] >= dense_row["recall@1"]
    assert chosen["recall@1"] == max(r["recall@1"] for r in table)
    assert len(table) == 1 + 5 * 3  # dense alone, and five BM25 weights by three rrf_k


def test_rerank_weight_blends_and_is_tuned(tiny_bert, sections, reranker):
    adapter, _ = reranker
    kb = pk.KnowledgeBase.build(sections, embedder=tiny_bert)
    query = "tell me about chess"
    first = [h.id for h in kb.search(query, k=5, candidates=7)]
    assert [h.id for h in kb.search(query, k=5, rerank=adapter, candidates=5,
                                     rerank_weight=0.0)] == first  # weight 0: first stage
    with pytest.raises(KnowledgeBaseError, match="rerank_weight"):
        kb.search(query, rerank=adapter, rerank_weight=1.5)
    queries = [f"tell me about {t}" for t in TOPICS]
    weight, table = pk.knowledge.tune_rerank_weight(kb, adapter, queries, list(TOPICS),
                                                    candidates=5, k=3)
    assert table[0]["rerank_weight"] == 0.0 and len(table) == 9
    best = max(r["recall@1"] for r in table)
    chosen = next(r for r in table if r["rerank_weight"] == weight)
    assert chosen["recall@1"] == best and best >= table[0]["recall@1"]

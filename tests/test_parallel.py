"""Embedding with several processes, and on a (local) Ray cluster, builds the same knowledge base."""

from __future__ import annotations

import numpy as np
import pytest

import promptkit as pk


def _contents(kb):
    ids, vectors = kb.store.all_vectors()
    rows = kb.store.rows(ids.tolist())
    return ids, vectors, [rows[i][1:5] for i in ids.tolist()]


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for n in range(12):
        paragraphs = [f"Document {n}, paragraph {p}: " + " ".join(
            f"word{(n * 7 + p * 3 + w) % 50}" for w in range(40)) for p in range(4)]
        (folder / f"doc{n}.md").write_text("\n\n".join(paragraphs))
    return folder


def test_ray_build_matches_the_single_process_build(corpus, tmp_path, tiny_bert):
    ray = pytest.importorskip("ray")
    chunking = {"max_tokens": 48, "overlap": 8}
    single = pk.KnowledgeBase.build(corpus, embedder=tiny_bert, chunking=chunking,
                                    path=tmp_path / "single")
    try:
        spread = pk.KnowledgeBase.build(corpus, embedder=tiny_bert, chunking=chunking,
                                        path=tmp_path / "ray", engine="ray", workers=2)
        assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2
    finally:
        ray.shutdown()
    ids, vectors, rows = _contents(single)
    ray_ids, ray_vectors, ray_rows = _contents(spread)
    assert len(ids) > 12  # the documents were really chunked
    assert ids.tolist() == ray_ids.tolist() and rows == ray_rows
    np.testing.assert_allclose(vectors, ray_vectors, atol=1e-5)
    assert spread.store.document_hashes() == single.store.document_hashes()
    assert spread.update().unchanged == 12  # incremental updates work on the Ray-built one


def test_several_workers_embed_the_same_vectors(tmp_path, tiny_bert):
    records = [f"record number {i} about {'cats' if i % 2 else 'rivers'} and more" for i in range(300)]
    one = pk.KnowledgeBase.build(records, embedder=tiny_bert)
    two = pk.KnowledgeBase.build(records, embedder=tiny_bert, workers=2)
    ids, vectors, rows = _contents(one)
    ids2, vectors2, rows2 = _contents(two)
    assert ids.tolist() == ids2.tolist() and rows == rows2
    np.testing.assert_allclose(vectors, vectors2, atol=1e-5)
    with pytest.raises(pk.errors.KnowledgeBaseError, match="workers"):
        pk.KnowledgeBase.build(records, embedder=tiny_bert, workers=0)
    with pytest.raises(pk.errors.KnowledgeBaseError, match="engine"):
        pk.KnowledgeBase.build(records, embedder=tiny_bert, engine="spark")

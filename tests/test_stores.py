"""The VectorStore contract: one suite, every backend (faiss on disk, milvus on milvus-lite)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import promptkit as pk
from promptkit.errors import KnowledgeBaseError
from promptkit.knowledge.stores import (
    DocumentRecord,
    StoredChunk,
    chunk_id,
    open_store,
    parse_store,
    text_hash,
)

BACKENDS = ["faiss", "milvus"]
DIM = 8


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "milvus":
        pytest.importorskip("pymilvus")
    return request.param


def _open(backend, root):
    store = open_store(parse_store(backend), root)
    return store


def _chunks(texts, source="doc.md", **meta):
    out = []
    for i, text in enumerate(texts):
        digest = text_hash(text)
        out.append(
            StoredChunk(
                chunk_id(source, i * 100, digest),
                source,
                text,
                i * 100,
                i * 100 + len(text),
                digest,
                {"n": i, **meta},
            )
        )
    return out


def _vectors(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def filled(backend, tmp_path):
    store = _open(backend, tmp_path / "store")
    store.bind("test-embedder", "abc", DIM)
    texts = [f"passage {i} about {'rivers' if i % 2 else 'mountains'}" for i in range(40)]
    texts[7] = "the zorblat is a rare creature of the deep"
    chunks = _chunks(texts, kind="odd")
    for c in chunks:
        c.metadata["parity"] = "odd" if c.metadata["n"] % 2 else "even"
    vectors = _vectors(40)
    store.write(chunks, vectors, [DocumentRecord("doc.md", "h1", {"title": "Doc"})])
    yield store, chunks, vectors
    with contextlib.suppress(Exception):  # a test may have closed it already
        store.close()


def test_upsert_by_id_is_visible_to_the_next_search(filled):
    store, chunks, vectors = filled
    assert store.count() == 40
    hits = store.search(vectors[3:4], 1)[0]
    assert hits[0][0] == chunks[3].id and hits[0][1] == pytest.approx(1.0, abs=1e-3)
    moved = _vectors(1, seed=9)
    replaced = StoredChunk(
        chunks[3].id, "doc.md", "replaced text", 300, 313, text_hash("x"), {"n": 3}
    )
    store.write([replaced], moved)
    assert store.count() == 40  # an upsert, not a second copy
    assert store.search(moved, 1)[0][0][0] == chunks[3].id
    assert store.rows([chunks[3].id])[chunks[3].id][2] == "replaced text"
    assert all(hit[0] != chunks[3].id for hit in store.search(vectors[3:4], 3)[0] if hit[1] > 0.999)


def test_delete_by_ids_by_filter_and_by_source(filled):
    store, chunks, vectors = filled
    assert store.delete(ids=[chunks[0].id, chunks[1].id]) == 2
    assert store.count() == 38
    assert chunks[0].id not in {i for i, _ in store.search(vectors[0:1], 5)[0]}
    removed = store.delete(where={"parity": "odd", "n": {"lt": 10}})
    assert removed == 4  # 3, 5, 7, 9 (1 is gone already)
    assert store.ids_matching({"parity": "odd", "n": {"lt": 10}}) == []
    assert store.delete(sources=["doc.md"]) == 34
    assert store.count() == 0 and store.documents() == []


def test_prefilter_equality_membership_and_ranges(filled):
    store, chunks, vectors = filled
    by_id = {c.id: c for c in chunks}
    cases = [
        ({"parity": "even"}, lambda c: c.metadata["n"] % 2 == 0),
        ({"n": [1, 2, 39]}, lambda c: c.metadata["n"] in (1, 2, 39)),
        ({"n": {"gte": 10, "lt": 13}}, lambda c: 10 <= c.metadata["n"] < 13),
        ({"source": "doc.md", "n": {"ne": 0}}, lambda c: c.metadata["n"] != 0),
    ]
    for where, keep in cases:
        expected = {c.id for c in chunks if keep(c)}
        assert set(store.ids_matching(where)) == expected, where
        hits = store.search(vectors[0:1], 5, where)[0]
        assert len(hits) == min(5, len(expected)), where  # a selective filter still fills k
        assert {i for i, _ in hits} <= expected, where
        assert all(keep(by_id[i]) for i, _ in store.search_text("passage", 5, where))


def test_bm25_and_hybrid(filled):
    store, chunks, vectors = filled
    assert store.search_text("zorblat creature", 3)[0][0] == chunks[7].id
    fused = store.hybrid("zorblat", vectors[20], 5, None, (1.0, 1.0), 60)
    ids = [i for i, _ in fused]
    assert chunks[7].id in ids and chunks[20].id in ids[:2]
    weighted = store.hybrid("zorblat", vectors[20], 5, None, (1.0, 0.0), 60)
    assert weighted[0][0] == chunks[20].id


def test_persistence_and_reopen(backend, tmp_path, filled):
    store, chunks, vectors = filled
    before = store.search(vectors[:5], 3)
    docs = store.documents()
    store.close()
    again = _open(backend, tmp_path / "store")
    try:
        assert again.count() == 40
        assert again.info == {"embedder": "test-embedder", "fingerprint": "abc", "dimension": DIM}
        assert [[i for i, _ in h] for h in again.search(vectors[:5], 3)] == [
            [i for i, _ in h] for h in before
        ]
        assert [(d.source, d.content_hash) for d in again.documents()] == [
            (d.source, d.content_hash) for d in docs
        ]
        assert again.cached_embeddings([chunks[4].text_hash])[chunks[4].text_hash] == pytest.approx(
            vectors[4], abs=1e-5
        )
        np.testing.assert_allclose(
            again.vectors([chunks[2].id, chunks[9].id]), vectors[[2, 9]], atol=1e-5
        )
    finally:
        again.close()


def test_dimension_and_embedder_mismatch_are_clear_errors(filled):
    store, _, _ = filled
    with pytest.raises(KnowledgeBaseError, match="dimensions"):
        store.search(np.zeros((1, DIM + 1), np.float32), 3)
    with pytest.raises(KnowledgeBaseError, match="dimensions"):
        store.write(_chunks(["other"], source="b.md"), np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(KnowledgeBaseError, match="test-embedder"):
        store.check(embedder="another-embedder")


def test_filter_values_never_inject(filled):
    store, _, vectors = filled
    sneaky = ['odd" or id >= 0 or "', "odd' or 1 == 1 or '", 'odd\\" or true or \\"']
    for value in sneaky:
        assert store.ids_matching({"parity": value}) == []
        assert store.search(vectors[0:1], 5, {"parity": value})[0] == []
        assert store.delete(where={"parity": value}) == 0
    assert store.count() == 40
    with pytest.raises(KnowledgeBaseError, match="plain field name"):
        store.ids_matching({'parity"] or id >= 0 or metadata["x': "odd"})


def test_milvus_filter_expressions_escape_values():
    from promptkit.knowledge.stores.milvus_store import milvus_filter

    assert milvus_filter({"a": 'x" or true or "'}) == r'(metadata["a"] == "x\" or true or \"")'
    assert (
        milvus_filter({"n": {"gte": 2, "lt": 5}}) == '(metadata["n"] >= 2) and (metadata["n"] < 5)'
    )
    assert milvus_filter({"source": ["a.md", "b.md"]}) == '(source == "a.md" or source == "b.md")'
    with pytest.raises(KnowledgeBaseError, match="must be a string, number or boolean"):
        milvus_filter({"a": {"gte": [1]}})


def test_knowledge_base_works_unchanged_on_every_backend(backend, tmp_path, tiny_bert):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "rivers.txt").write_text("Rivers carry water to the sea. The Zorblat river is long.")
    (folder / "cats.txt").write_text("Cats sleep most of the day and hunt at night.")
    kb = pk.KnowledgeBase.build(folder, embedder=tiny_bert, store=backend, path=tmp_path / "kb")
    assert len(kb) == 2 and kb.stats()["store"]["backend"] == backend
    assert kb.search("Zorblat", k=1, hybrid=True)[0].source == "rivers.txt"
    assert len(kb.search("anything", k=2, distinct="source")) == 2
    assert [h.source for h in kb.search("x", k=5, filter={"source": "cats.txt"})] == ["cats.txt"]
    (folder / "dogs.txt").write_text("Dogs bark.")
    assert kb.update().added == 1 and len(kb) == 3
    assert kb.delete(sources=["cats.txt"]) == 1
    kb.close()
    again = pk.KnowledgeBase.load(tmp_path / "kb")
    assert sorted(h.source for h in again.search("x", k=5)) == ["dogs.txt", "rivers.txt"]
    assert again.update().unchanged == 2
    again.close()


def test_migrate_between_backends_keeps_chunks_and_vectors(tmp_path, tiny_bert):
    pytest.importorskip("pymilvus")
    records = [{"text": f"note {i}", "topic": i % 3} for i in range(30)]
    dimension = pk.KnowledgeBase.build(["probe"], embedder=tiny_bert).dimension
    vectors = np.random.default_rng(0).normal(size=(30, dimension))  # no ties between notes
    kb = pk.KnowledgeBase.build(records, embedder=tiny_bert, path=tmp_path / "kb", vectors=vectors)
    moved = kb.migrate("milvus", tmp_path / "moved")
    ids, vectors = kb.store.all_vectors()
    moved_ids, moved_vectors = moved.store.all_vectors()
    assert ids.tolist() == moved_ids.tolist()
    np.testing.assert_allclose(vectors, moved_vectors, atol=1e-6)
    query = vectors[4:5] + vectors[7:8]
    assert [h.id for h in moved.search_by_vector(query, k=5, filter={"topic": 1})[0]] == [
        h.id for h in kb.search_by_vector(query, k=5, filter={"topic": 1})[0]
    ]
    moved.close()
    assert pk.KnowledgeBase.load(tmp_path / "moved").stats()["store"]["backend"] == "milvus"


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import promptkit as pk
    from promptkit.knowledge.stores import faiss_store, milvus_store
    kb = pk.KnowledgeBase.load(sys.argv[1])
    store = type(kb.store)
    original = store.write
    def slow(self, chunks, vectors, documents=(), replace_sources=()):
        if isinstance(self, faiss_store.FaissStore):  # rows on disk, not yet committed
            original_append = self._append
            def append(v, i):
                result = original_append(v, i)
                print("writing", flush=True)
                time.sleep(60)
                return result
            self._append = append
            return original(self, chunks, vectors, documents, replace_sources)
        half = len(chunks) // 2  # milvus: half of the chunks are in, the documents are not
        original(self, chunks[:half], vectors[:half])
        print("writing", flush=True)
        time.sleep(60)
    store.write = slow
    kb.add([f"second batch {i}" for i in range(10)])
""")


def test_sigkill_during_add_leaves_a_searchable_consistent_store(backend, tmp_path, tiny_bert):
    pk.KnowledgeBase.build(
        [f"first batch {i}" for i in range(10)],
        embedder=tiny_bert,
        store=backend,
        path=tmp_path / "kb",
    ).close()
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "kb")], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "writing"
    process.kill()
    process.wait()
    kb = pk.KnowledgeBase.load(tmp_path / "kb")
    hits = kb.search("batch", k=50)
    assert len(hits) == len(kb)  # every chunk the docstore lists is in the index, and back
    texts = {h.text for h in hits}
    assert {f"first batch {i}" for i in range(10)} <= texts
    if backend == "faiss":
        assert len(kb) == 10  # the interrupted write was never committed
    kb.add([f"second batch {i}" for i in range(10)])  # and writing again completes it
    assert len(kb) == 20 and len(kb.search("batch", k=50)) == 20
    kb.close()


def _written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no /proc/self/io")


def _size(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_faiss_adds_and_deletes_without_retraining_or_rewriting(tmp_path, tiny_bert):
    rng = np.random.default_rng(0)
    dimension = pk.KnowledgeBase.build(["probe"], embedder=tiny_bert).dimension
    records = [{"text": f"chunk {i}", "source": f"c{i}", "batch": "base"} for i in range(4000)]
    kb = pk.KnowledgeBase.build(records, embedder=tiny_bert, index="ivf_sq8", path=tmp_path / "kb",
                                vectors=rng.normal(size=(4000, dimension)))
    store = kb.store
    trained, size = store.trainings, _size(tmp_path / "kb")
    index_file = next((tmp_path / "kb").glob("index.*.faiss"))
    index_stamp = index_file.stat().st_mtime_ns, index_file.stat().st_size
    vectors_file = next((tmp_path / "kb").glob("data.*.f32"))
    vectors_size = vectors_file.stat().st_size
    assert kb.stats()["index"] == "ivf_sq8" and store.stats()["main_rows"] == 4000
    extra = [{"text": f"extra {i}", "source": f"e{i}", "batch": "extra"} for i in range(40)]
    before = _written()
    kb.add(extra, vectors=rng.normal(size=(40, dimension)))
    added = _written() - before
    assert store.trainings == trained  # no retraining
    # no rewrite: the index file is untouched, the vectors file grew by the new rows only, and
    # what was written (rows + SQLite pages) is a fraction of the knowledge base
    assert (index_file.stat().st_mtime_ns, index_file.stat().st_size) == index_stamp
    assert vectors_file.stat().st_size == vectors_size + 40 * dimension * 4
    assert added < 0.25 * size, (added, size)
    assert store.stats()["delta_rows"] == 40
    probe = kb.store.vectors([kb.store.ids_matching({"batch": "extra"})[0]])
    assert kb.search_by_vector(probe, k=1)[0][0].metadata["batch"] == "extra"
    before = _written()
    assert kb.delete(where={"batch": "extra"}) == 40
    assert _written() - before < 0.25 * size and store.trainings == trained
    assert (index_file.stat().st_mtime_ns, index_file.stat().st_size) == index_stamp
    assert len(kb) == 4000 and all(h.metadata["batch"] == "base"
                                   for h in kb.search_by_vector(probe, k=5)[0])
    again = pk.KnowledgeBase.load(tmp_path / "kb", verify=True)
    assert len(again) == 4000 and again.store.count() == again.store.docs.count()
    # retraining: on optimize (compacting deleted rows away), or once the collection doubled
    again.optimize()
    assert again.store.trainings == 1 and again.store.state["rows"] == 4000
    more = [{"text": f"more {i}", "source": f"m{i}"} for i in range(4000)]
    again.add(more, vectors=rng.normal(size=(4000, dimension)))
    assert again.store.trainings == 2 and again.stats()["main_rows"] == 8000


def test_optimize_keeps_every_chunk_searchable(filled):
    store, chunks, vectors = filled
    store.delete(ids=[c.id for c in chunks[:10]])
    store.optimize()
    assert store.count() == 30
    assert store.search(vectors[20:21], 1)[0][0][0] == chunks[20].id

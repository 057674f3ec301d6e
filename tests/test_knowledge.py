"""Knowledge bases: incremental indexing, filters before search, persistence, concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import promptkit as pk
from promptkit.errors import KnowledgeBaseError
from promptkit.knowledge import ChunkingConfig, chunk_text, scan_folder


@pytest.fixture()
def folder(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cats.md").write_text("---\ntopic: animals\nyear: 2020\n---\n# Cats\n\n"
                                  "Cats are small carnivorous mammals that purr.\n")
    (docs / "rivers.txt").write_text("The Zorblat river is approximately 420 km long.\n")
    (docs / "page.html").write_text("<html><head><title>Film</title><style>.x{}</style>"
                                    "<script>alert(1)</script></head><body><h1>Film</h1>"
                                    "<p>A good film is great fun.</p></body></html>")
    (docs / "table.csv").write_text("text,kind\nBad films are awful.,review\n")
    return docs


def test_build_search_and_citations(folder, tiny_bert):
    kb = pk.KnowledgeBase.build(folder, embedder=tiny_bert)
    assert kb.stats()["documents"] == 4
    hits = kb.search("Zorblat river", k=4)
    assert len(hits) == 4
    for hit in hits:
        source_text = (folder / hit.source).read_text()
        if hit.source.endswith((".md", ".txt")):
            assert source_text[hit.span[0]: hit.span[1]] == hit.text
    html = next(h for h in hits if h.source == "page.html")
    assert "alert" not in html.text and ".x{}" not in html.text and "good film" in html.text
    cats = next(h for h in hits if h.source == "cats.md")
    assert cats.metadata["topic"] == "animals" and cats.metadata["title"] == "Cats"


def test_rebuild_unchanged_embeds_nothing(folder, tiny_bert, tmp_path):
    kb = pk.KnowledgeBase.build(folder, embedder=tiny_bert, path=tmp_path / "kb")
    built = len(kb)
    loaded = pk.KnowledgeBase.load(tmp_path / "kb")
    before = loaded.embedder.texts_encoded
    stats = loaded.update()
    assert loaded.embedder.texts_encoded == before, "an unchanged folder must embed nothing"
    assert stats.changed == stats.added == stats.removed == 0
    (folder / "rivers.txt").write_text("The Zorblat river is approximately 421 km long.\n")
    (folder / "cats.md").unlink()
    stats = loaded.update()
    assert (stats.changed, stats.removed, stats.chunks_embedded) == (1, 1, 1)
    reopened = pk.KnowledgeBase.load(tmp_path / "kb")
    sources = {h.source for h in reopened.search("cats purr", k=10)}
    assert "cats.md" not in sources and "rivers.txt" in sources
    assert kb.path == tmp_path / "kb" and len(reopened) == built - 1  # cats.md had one chunk


def test_selective_filter_found_before_search(tiny_bert):
    rng = np.random.default_rng(0)
    records = [{"text": f"note {i} " + " ".join(rng.choice(["good", "bad", "film"], 3)),
                "shard": i % 7, "num": i} for i in range(10_000)]
    records[1234]["owner"] = "needle"
    kb = pk.KnowledgeBase.build(records, embedder=tiny_bert)
    hits = kb.search("completely unrelated words", k=5, filter={"owner": "needle"})
    assert [h.metadata["num"] for h in hits] == [1234]
    ranged = kb.search("film", k=50, filter={"num": {"gte": 10, "lt": 13}})
    assert sorted(h.metadata["num"] for h in ranged) == [10, 11, 12]
    member = kb.search("film", k=50, filter={"num": [5, 9999]})
    assert sorted(h.metadata["num"] for h in member) == [5, 9999]


def test_hybrid_and_index_types(folder, tiny_bert):
    kb = pk.KnowledgeBase.build(folder, embedder=tiny_bert)
    hybrid = kb.search("Zorblat", k=2, hybrid=True)
    assert hybrid[0].source == "rivers.txt"  # BM25 finds the rare exact word
    # vectors with neighbours (a low-dimensional latent space plus noise): tiny random models
    # embed most texts alike, and ties make recall meaningless
    rng = np.random.default_rng(0)
    projection = rng.normal(size=(6, 32))

    def sample(n):
        v = rng.normal(size=(n, 6)) @ projection + 0.3 * rng.normal(size=(n, 32))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    records, vectors, queries = [f"record {i}" for i in range(3000)], sample(3000), sample(50)
    exact = pk.KnowledgeBase.build(records, embedder=tiny_bert, index="flat", vectors=vectors)
    truth = [{h.id for h in hits} for hits in exact.search_by_vector(queries, k=10)]
    for kind in ("hnsw", "hnsw_sq8", "ivf_flat", "ivf_sq8", "ivf_pq"):
        approx = pk.KnowledgeBase.build(records, embedder=tiny_bert, index=kind, vectors=vectors)
        found = [{h.id for h in hits} for hits in approx.search_by_vector(queries, k=10)]
        measured = np.mean([len(a & b) / 10 for a, b in zip(found, truth, strict=True)])
        # recall against exact search, on queries that are not indexed vectors
        assert measured >= 0.8, (kind, measured)
        assert abs(approx.stats()["recall_at_10"] - measured) <= 0.15, (kind, measured)
        assert approx.stats()["index"] == kind
        assert len(approx.search("record", k=5)) == 5
    assert exact.stats()["recall_at_10"] == 1.0
    with pytest.raises(KnowledgeBaseError, match="needs at least"):
        pk.KnowledgeBase.build(records[:20], embedder=tiny_bert, index="ivf_pq")


def test_rerank_with_a_cross_encoder(folder, tiny_bert):
    from promptkit.testing import toy_pairs

    kb = pk.KnowledgeBase.build(folder, embedder=tiny_bert)
    reranker = pk.create_adapter("full", model=tiny_bert, task=pk.Task.rerank(), epochs=1,
                                 hard_negatives=1)
    reranker.fit(toy_pairs(8))
    hits = kb.search("river", k=3, rerank=reranker)
    assert len(hits) == 3
    assert hits == sorted(hits, key=lambda h: -h.score)
    dense = [h.id for h in kb.search("river", k=3)]
    narrow = kb.search("river", k=3, rerank=reranker, candidates=3)  # reorders the dense top 3
    assert sorted(h.id for h in narrow) == sorted(dense)
    with pytest.raises(KnowledgeBaseError, match="candidates must be at least k"):
        kb.search("river", k=3, rerank=True, candidates=2)


def test_mismatched_embedder_and_corrupted_index(folder, tiny_bert, tmp_path):
    pk.KnowledgeBase.build(folder, embedder=tiny_bert, path=tmp_path / "kb")
    with pytest.raises(KnowledgeBaseError, match="built with embedder"):
        pk.KnowledgeBase.load(tmp_path / "kb", embedder="minilm")
    pk.KnowledgeBase.build([f"note {i}" for i in range(300)], embedder=tiny_bert,
                           index="hnsw", path=tmp_path / "kb")
    index = tmp_path / "kb" / "index.1.faiss"
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(KnowledgeBaseError, match=r"index\.1\.faiss.*corrupted"):
        pk.KnowledgeBase.load(tmp_path / "kb")


def test_query_dimension_checked(folder, tiny_bert):
    kb = pk.KnowledgeBase.build(folder, embedder=tiny_bert)
    with pytest.raises(KnowledgeBaseError, match="dimensions"):
        kb.search_by_vector(np.zeros((1, 7), dtype=np.float32), 3)


def test_bad_files_skipped_with_one_warning(folder, tmp_path):
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (folder / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _documents, skipped = scan_folder(folder)
    assert len(caught) == 1 and "binary.txt" in str(caught[0].message)
    assert {s.split(" ")[0] for s in skipped} == {"binary.txt", "latin.txt"}
    with pytest.raises(KnowledgeBaseError, match="binary"):
        scan_folder(folder, strict=True)
    (folder / "binary.txt").unlink()
    (folder / "latin.txt").unlink()
    os.symlink(outside, folder / "link.txt")
    with pytest.raises(KnowledgeBaseError, match="outside the knowledge folder"):
        scan_folder(folder)


def test_chunks_respect_limit_and_spans():
    text = "# Title\n\n" + "\n\n".join(" ".join(f"w{i}{j}." for j in range(40)) for i in range(6))

    def count(piece: str) -> int:
        return len(piece.split())

    chunks = chunk_text(text, count, ChunkingConfig(max_tokens=25, overlap=5))
    assert all(count(c.text) <= 25 for c in chunks)
    assert all(text[c.start: c.end] == c.text for c in chunks)
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


WRITER = textwrap.dedent("""
    import sys
    import promptkit as pk
    kb = pk.KnowledgeBase.load(sys.argv[1])
    for start in range(0, 500, 100):
        kb.add([{"text": f"{sys.argv[2]} record {i}", "writer": sys.argv[2]}
                for i in range(start, start + 100)])
""")


def test_two_writers_lose_nothing(tiny_bert, tmp_path):
    pk.KnowledgeBase.build(["seed document"], embedder=tiny_bert, path=tmp_path / "kb")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    processes = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "kb"), name])
                 for name in ("alpha", "beta")]
    assert [p.wait(timeout=300) for p in processes] == [0, 0]
    kb = pk.KnowledgeBase.load(tmp_path / "kb")
    assert len(kb) == 1001
    assert len(kb.store.ids_matching({"writer": "alpha"})) == 500
    assert len(kb.store.ids_matching({"writer": "beta"})) == 500


def test_sigkill_during_add_keeps_previous(tiny_bert, tmp_path):
    pk.KnowledgeBase.build(["first version"], embedder=tiny_bert, path=tmp_path / "kb")
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(f"""
        import time, promptkit as pk
        from promptkit.knowledge.stores import faiss_store as store
        original = store.FaissStore._append
        def slow(self, vectors, ids):
            result = original(self, vectors, ids)  # the rows are on disk, not yet committed
            print("saving", flush=True)
            time.sleep(60)
            return result
        store.FaissStore._append = slow
        kb = pk.KnowledgeBase.load({str(tmp_path / "kb")!r})
        kb.add(["second version"])
    """))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "saving"
    process.kill()
    process.wait()
    kb = pk.KnowledgeBase.load(tmp_path / "kb", verify=True)
    assert [h.text for h in kb.search("version", k=5)] == ["first version"]
    assert len(kb) == kb.store.docs.count() == kb.store.delta.ntotal == 1  # index and docstore agree


def test_ivf_pq_refine_reorders_candidates_and_keeps_filters(tmp_path):
    import faiss

    from promptkit.knowledge.index import build_index, measure_recall, search_params

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(6000, dtype=np.int64) * 7 + 3  # ids that differ from positions
    recall = {}
    for refine in (None, "sq8", "flat"):
        index = build_index("ivf_pq", vectors, ids, {"nlist": 16, "m": 8, "refine": refine})
        exact = build_index("flat", vectors, ids, {})
        queries = vectors[:200] + vectors[200:400]  # not indexed vectors
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        recall[refine] = measure_recall(index, queries, exact.search(queries, 10)[1], k=10)
        allowed = ids[::5]
        params = search_params(index, faiss.IDSelectorBatch(allowed))
        _, found = index.search(vectors[:20], 10, params=params)
        assert set(found.ravel().tolist()) <= set(allowed.tolist())
        faiss.write_index(index, str(tmp_path / "index.faiss"))
        again = faiss.read_index(str(tmp_path / "index.faiss"))
        assert (again.search(vectors[:5], 10)[1] == index.search(vectors[:5], 10)[1]).all()
    assert recall["sq8"] > recall[None] + 0.1 and recall["flat"] > recall[None] + 0.1
    with pytest.raises(KnowledgeBaseError, match="refine"):
        build_index("ivf_pq", vectors, ids, {"nlist": 16, "m": 8, "refine": "pq"})


def test_distinct_sources(tiny_bert, tmp_path):
    docs = tmp_path / "distinct"
    docs.mkdir()
    page = ("good film " * 30).strip()
    (docs / "long.txt").write_text("\n\n".join([page] * 12))  # many chunks, all like the query
    for i in range(4):
        (docs / f"short{i}.txt").write_text(f"bad movie number {i}")
    kb = pk.KnowledgeBase.build(docs, embedder=tiny_bert, chunking={"max_tokens": 64})
    plain = kb.search(page, k=3)
    assert len({h.source for h in plain}) < 3, "the long page alone fills the plain top 3"
    hits = kb.search(page, k=3, distinct="source")
    assert len(hits) == 3 and len({h.source for h in hits}) == 3
    assert hits[0].source == "long.txt" and hits[0].score == pytest.approx(plain[0].score)
    assert len(kb.search(page, k=10, distinct="source")) == 5  # only 5 documents exist


def _minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose page draws ``text`` (hand-built: no PDF writer needed)."""
    content = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_pdf_files_are_indexed(tmp_path, tiny_bert):
    pytest.importorskip("pypdf")
    docs = tmp_path / "pdfs"
    docs.mkdir()
    (docs / "rivers.pdf").write_bytes(_minimal_pdf("Boats float down the river"))
    (docs / "notes.txt").write_text("bakers knead dough before dawn")
    kb = pk.KnowledgeBase.build(docs, embedder=tiny_bert)
    hits = kb.search("boats", k=5, filter={"source": "rivers.pdf"})
    assert [h.text for h in hits] == ["Boats float down the river"]
    assert hits[0].metadata["title"] == "rivers" and hits[0].metadata["pages"] == 1


def test_chunk_documents_counts_in_one_call_and_chunks_as_one_at_a_time(tiny_bert):
    from promptkit.knowledge.embedder import Embedder
    from promptkit.knowledge.loaders import Document
    from promptkit.knowledge.parallel import chunk_documents

    embedder = Embedder(tiny_bert, show_progress=False)
    long = "\n\n".join(" ".join(f"word{i}{j}" for j in range(30)) + "." for i in range(4))
    documents = [Document(text, f"d{i}", {"n": i}) for i, text in
                 enumerate(["a short one", "  padded with spaces  ", long, "# Head\nunder it"])]
    config = ChunkingConfig(max_tokens=40, overlap=5)
    calls = []

    def counting(text):
        calls.append(text)
        return Embedder.count_tokens(embedder, text)

    embedder.count_tokens = counting  # the single-text counter, watched
    chunks = chunk_documents(documents, embedder, config)
    one_at_a_time = [(d.source, c.text, c.start, c.end) for d in documents
                     for c in chunk_text(d.text, embedder.count_tokens, config, d.metadata)]
    assert [(c.source, c.text, c.start, c.end) for c in chunks] == one_at_a_time
    assert len(one_at_a_time) > len(documents)  # the long document was split
    # the short documents were counted in the one batched call, never one at a time
    assert "a short one" in {c.text for c in chunks}
    assert calls.count("a short one") == 1  # only chunk_text's own call above counted it

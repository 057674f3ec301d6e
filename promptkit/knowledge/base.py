"""``KnowledgeBase``: documents → chunks → embeddings → FAISS index + SQLite docstore.

A knowledge base is an artifact directory (``manifest.json``, ``docstore.sqlite``,
``index.faiss``). Re-indexing is incremental by content hash; a file lock serializes writers, and
each write goes through a temporary directory, so a crash leaves the previous version loadable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promptkit.artifacts import artifact_size, read_manifest, write_artifact
from promptkit.config import validate
from promptkit.errors import KnowledgeBaseError
from promptkit.knowledge.chunking import ChunkingConfig, chunk_text
from promptkit.knowledge.embedder import Embedder, get_embedder
from promptkit.knowledge.index import (
    EXACT_BELOW,
    build_index,
    choose_index_type,
    index_types,
    measure_recall,
    search_index,
)
from promptkit.knowledge.loaders import Document, scan_folder
from promptkit.knowledge.ranking import (
    HOW_TO_TRAIN,
    BM25Ranker,
    CrossEncoderReranker,
    Fusion,
    Hit,
    fuse,
)
from promptkit.knowledge.store import DocStore, text_hash

KIND = "knowledge_base"


@dataclass
class UpdateStats:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0


class KnowledgeBase:
    """A searchable collection of chunks. Build one with :meth:`build`, reopen with :meth:`load`."""

    def __init__(
        self,
        embedder: str = "minilm",
        index: str = "auto",
        index_params: dict[str, Any] | None = None,
        chunking: ChunkingConfig | Mapping[str, Any] | None = None,
        source: str | Path | None = None,
        strict: bool = False,
        device: str = "auto",
    ) -> None:
        if index != "auto" and index not in index_types:
            raise KnowledgeBaseError(index_types.unknown_message(index))
        self.embedder_name = embedder
        self.embedder_fingerprint: str | None = None  # whose vectors the store holds
        self.device = device  # where the embedder runs: a runtime choice, not saved
        self.index_type = index
        self.index_params = dict(index_params or {})
        self.chunking = (
            chunking
            if isinstance(chunking, ChunkingConfig)
            else validate(ChunkingConfig, dict(chunking or {}), "chunking settings")
        )
        self.source = str(Path(source).resolve()) if source else None
        self.strict = strict
        self.path: Path | None = None
        self.store = DocStore()
        self.dimension: int | None = None
        self.recall_at_10: float | None = None
        self._embedder: Embedder | None = None
        self._index: Any = None
        self._index_kind = index if index != "auto" else "flat"
        self._exact: Any = None
        self._bm25: BM25Ranker | None = None
        self._reranker: CrossEncoderReranker | None = None
        self._loaded_stamp: str | None = None

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        source: str | Path | Iterable[Any],
        embedder: str = "minilm",
        index: str = "auto",
        chunking: ChunkingConfig | Mapping[str, Any] | None = None,
        index_params: dict[str, Any] | None = None,
        strict: bool = False,
        path: str | Path | None = None,
        device: str = "auto",
    ) -> KnowledgeBase:
        """Index a folder (or an iterable of records/strings). With ``path``, also save there.

        ``device`` is where the embedder runs ("auto": CUDA if present, else CPU).
        """
        folder = source if isinstance(source, (str, Path)) else None
        kb = cls(embedder, index, index_params, chunking, folder, strict, device)
        if folder is not None:
            kb._sync_folder()
        else:
            kb._add_records(source)  # type: ignore[arg-type]
        kb._ensure_index()  # built (and, if approximate, its recall measured) now
        if path is not None:
            kb.save(path)
            kb.path = Path(path)  # built at a path: later updates go there
        return kb

    @classmethod
    def load(
        cls, path: str | Path, embedder: str | None = None, device: str = "auto"
    ) -> KnowledgeBase:
        """Open a saved knowledge base; ``embedder``, if given, must match the one it used."""
        root = Path(path)
        manifest = read_manifest(root, kind=KIND)
        config, meta = manifest["config"], manifest["meta"]
        if embedder is not None and embedder != config["embedder"]:
            raise KnowledgeBaseError(
                f"{root} was built with embedder {config['embedder']!r} "
                f"({meta.get('dimension')} dimensions); it cannot be queried with {embedder!r}. "
                "Rebuild it with the new embedder, or load it without embedder=."
            )
        kb = cls(
            config["embedder"],
            config["index"],
            config.get("index_params"),
            config.get("chunking"),
            None,
            config.get("strict", False),
            device,
        )
        kb.source = config.get("source")
        kb._read(root, manifest)
        kb.path = root
        return kb

    def _read(self, root: Path, manifest: dict[str, Any]) -> None:
        import faiss

        self.store = DocStore(root / "docstore.sqlite")
        self.dimension = manifest["meta"].get("dimension")
        self.embedder_fingerprint = manifest["meta"].get("embedder_fingerprint")
        self.recall_at_10 = manifest["meta"].get("recall_at_10")
        self._index_kind = manifest["meta"].get("index_type") or "flat"
        index_file = root / "index.faiss"
        try:
            self._index = faiss.read_index(str(index_file)) if index_file.is_file() else None
        except RuntimeError as exc:
            raise KnowledgeBaseError(
                f"{index_file} could not be read ({str(exc).splitlines()[0]}). The file is "
                "corrupted; rebuild the knowledge base or restore it from a copy."
            ) from exc
        if self._index is not None and self._index.ntotal != self.store.count():
            raise KnowledgeBaseError(
                f"{index_file} holds {self._index.ntotal} vectors but the docstore has "
                f"{self.store.count()} chunks; rebuild the knowledge base."
            )
        self._bm25 = self._exact = None
        self._loaded_stamp = manifest.get("created", "") + str(manifest["files"])

    # ---- embedding ----------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder(self.embedder_name, self.device)
            if self.dimension is not None and self._embedder.dimension != self.dimension:
                raise KnowledgeBaseError(
                    f"Embedder {self.embedder_name!r} now gives {self._embedder.dimension}-dim "
                    f"vectors, but this knowledge base holds {self.dimension}-dim ones. Rebuild it."
                )
            found = self._embedder.fingerprint
            if self.embedder_fingerprint not in (None, found):
                self._embedder = None
                raise KnowledgeBaseError(
                    f"The embedder {self.embedder_name!r} has changed since this knowledge base "
                    f"was embedded (weights {found}, vectors from {self.embedder_fingerprint}); "
                    "its vectors would not match new queries. Call kb.reembed(<embedder>) to "
                    "embed it again."
                )
            self.dimension = self._embedder.dimension
            self.embedder_fingerprint = found
        return self._embedder

    def reembed(self, embedder: str, progress: bool = True) -> KnowledgeBase:
        """Embed every chunk again with ``embedder`` (an alias, path, or a saved retrieval
        adapter's directory) and rebuild the index; chunks and metadata stay as they are.

        Every stored vector is replaced, so none from the old embedder is left to mix with the
        new ones. A knowledge base bound to a directory is saved there again.
        """
        new = get_embedder(embedder, self.device)

        def change() -> None:
            ids, texts = self.store.all_texts()
            if texts:
                self.store.replace_embeddings(ids, new.encode(texts, progress=progress))
            self.embedder_name, self._embedder = embedder, new
            self.dimension, self.embedder_fingerprint = new.dimension, new.fingerprint
            self._invalidate()
            self._ensure_index()

        self._transaction(change)
        return self

    # ---- writing ------------------------------------------------------------------------------

    def _ingest(self, documents: list[Document], replace: Iterable[str] = ()) -> tuple[int, int]:
        """Chunk and embed ``documents`` (reusing cached vectors), replacing ``replace`` sources."""
        embedder = self.embedder
        limit = min(self.chunking.max_tokens, embedder.max_tokens)
        config = self.chunking.model_copy(update={"max_tokens": limit})
        pending = []
        for doc in documents:
            for chunk in chunk_text(doc.text, embedder.count_tokens, config, doc.metadata):
                pending.append((doc.source, chunk, text_hash(chunk.text)))
        cached = self.store.cached_embeddings(h for _, _, h in pending)
        self.store.delete_sources(replace)
        missing = sorted({h: c.text for _, c, h in pending if h not in cached}.items())
        vectors = embedder.encode([text for _, text in missing])
        cached.update({h: v for (h, _), v in zip(missing, vectors, strict=True)})
        next_id = self.store.next_id()
        rows = [
            (
                next_id + i,
                source,
                chunk.text,
                chunk.start,
                chunk.end,
                digest,
                chunk.metadata,
                cached[digest],
            )
            for i, (source, chunk, digest) in enumerate(pending)
        ]
        self.store.add_chunks(rows)
        for doc in documents:
            self.store.put_document(doc.source, doc.content_hash, doc.metadata)
        self._invalidate()
        return len(missing), len(pending) - len(missing)

    def _invalidate(self) -> None:
        self._index = self._exact = None
        self._bm25 = None

    def _sync_folder(self) -> UpdateStats:
        if self.source is None:
            raise KnowledgeBaseError("This knowledge base was not built from a folder.")
        documents, _ = scan_folder(Path(self.source), strict=self.strict)
        known = {
            s: h for s, h in self.store.document_hashes().items() if not s.startswith("record:")
        }
        stats = UpdateStats()
        fresh = {d.source: d for d in documents}
        changed = [d for d in documents if known.get(d.source) != d.content_hash]
        stats.added = sum(1 for d in changed if d.source not in known)
        stats.changed = len(changed) - stats.added
        stats.unchanged = len(documents) - len(changed)
        removed = [s for s in known if s not in fresh]
        stats.removed = len(removed)
        if changed or removed:
            embedded, reused = self._ingest(changed, replace=[d.source for d in changed] + removed)
            stats.chunks_embedded, stats.chunks_reused = embedded, reused
        return stats

    def _add_records(self, records: Iterable[Any]) -> int:
        documents = []
        for number, record in enumerate(records):
            if isinstance(record, str):
                record = {"text": record}
            if not isinstance(record, Mapping) or not isinstance(record.get("text"), str):
                raise KnowledgeBaseError(
                    f"Record {number} must be a string or a dict with a 'text' string."
                )
            meta = {k: v for k, v in record.items() if k not in ("text", "source")}
            doc = Document(record["text"], "", meta)
            doc.source = str(record.get("source") or f"record:{doc.content_hash[:16]}")
            documents.append(doc)
        embedded, _ = self._ingest(documents, replace=[d.source for d in documents])
        return embedded

    def _transaction(self, change: Any) -> Any:
        """Apply ``change`` under the directory's lock, on the latest saved state, then save."""
        if self.path is None:
            return change()
        from filelock import FileLock

        with FileLock(str(self.path) + ".lock"):
            manifest = read_manifest(self.path, kind=KIND)
            if manifest.get("created", "") + str(manifest["files"]) != self._loaded_stamp:
                self._read(self.path, manifest)  # another writer saved since we loaded
            result = change()
            self._loaded_stamp = self._write(self.path)
        return result

    def update(self) -> UpdateStats:
        """Re-scan the source folder: embed new and changed files, drop deleted ones."""
        return self._transaction(self._sync_folder)

    def add(self, records: Iterable[Any]) -> int:
        """Add records (strings, or dicts with ``text`` plus metadata). Returns chunks embedded."""
        items = list(records)
        return self._transaction(lambda: self._add_records(items))

    def delete(self, sources: Iterable[str] = (), where: dict[str, Any] | None = None) -> int:
        """Remove documents by source path, and/or chunks whose metadata match ``where``."""
        listed = list(sources)

        def change() -> int:
            removed = self.store.delete_sources(listed)
            if where:
                removed += self.store.delete_ids(self.store.ids_matching(where))
            self._invalidate()
            return removed

        return self._transaction(change)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the knowledge base as an artifact directory (atomically, under a file lock).

        Saving is pure: the object is unchanged, and keeps working on the directory it was loaded
        from (or built at). To work on the copy, ``KnowledgeBase.load(path)``.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise KnowledgeBaseError("save() needs a path: this knowledge base lives in memory.")
        from filelock import FileLock

        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            stamp = self._write(target)
        if self.path is not None and target.resolve() == self.path.resolve():
            self._loaded_stamp = stamp
        return target

    def nbytes(self) -> int:
        """Bytes this knowledge base takes as an artifact, measured without writing a copy."""
        if self.path is not None and self._loaded_stamp is not None:
            return artifact_size(self.path)
        vectors = self.store.count() * (self.dimension or 0) * 4
        return vectors * 2 + self.store.text_bytes()  # docstore copy + index + the texts

    def _write(self, target: Path) -> str:
        """Write an artifact at ``target``; returns its stamp (creation time + file table)."""
        import faiss

        index = self._ensure_index()
        config = {
            "embedder": self.embedder_name,
            "index": self.index_type,
            "index_params": self.index_params,
            "chunking": self.chunking.model_dump(),
            "source": self.source,
            "strict": self.strict,
        }
        meta = {
            "dimension": self.dimension,
            "normalized": True,
            "metric": "inner_product",
            "index_type": self.resolved_index_type,
            "chunks": self.store.count(),
            "documents": self.store.document_count(),
            "recall_at_10": self.recall_at_10,
            "embedder_fingerprint": self.embedder_fingerprint,
        }
        with write_artifact(target, kind=KIND, config=config, meta=meta) as staging:
            self.store.save(staging / "docstore.sqlite")
            if index is not None:
                faiss.write_index(index, str(staging / "index.faiss"))
        manifest = read_manifest(target, verify=False)
        return str(manifest.get("created", "")) + str(manifest["files"])

    # ---- index --------------------------------------------------------------------------------

    @property
    def resolved_index_type(self) -> str:
        if self.index_type != "auto":
            return self.index_type
        if self._index is not None:  # decided when the index was built; no count per query
            return self._index_kind
        return choose_index_type(self.store.count())

    def _ensure_index(self) -> Any:
        if self._index is not None:
            return self._index
        ids, vectors = self.store.all_vectors()
        if len(ids) == 0:
            return None
        kind = self._index_kind = self.resolved_index_type
        self.dimension = vectors.shape[1]
        self._index = build_index(
            kind, vectors, ids, {**self.index_params, "dimension": self.dimension}
        )
        self.recall_at_10 = 1.0 if kind == "flat" else measure_recall(self._index, vectors)
        return self._index

    # ---- search -------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        hybrid: Any = False,
        rerank: Any = False,
        candidates: int | None = None,
        distinct: str | None = None,
        rerank_weight: float = 1.0,
    ) -> list[Hit]:
        """The ``k`` chunks most similar to ``query``.

        ``filter`` is applied before the vector search (FAISS ID selectors), so a selective
        filter still returns its matches. ``hybrid`` fuses BM25 with dense results by reciprocal
        rank fusion (True, or a :class:`Fusion` / dict of dense_weight, sparse_weight, rrf_k);
        ``rerank`` (a fitted rerank adapter, its directory, or a cross-encoder checkpoint with a
        trained head) reorders the candidates; ``rerank_weight`` below 1 blends its standardized
        scores with the first stage's (choose it on validation with
        :func:`promptkit.knowledge.tune_rerank_weight`).
        ``candidates`` is how many chunks fusion and reranking start from (default ``4 * k``);
        reranking costs one cross-encoder pass per candidate. ``distinct="source"`` (or a
        metadata field) returns ``k`` hits with different values of it — the best chunk of each
        of ``k`` documents rather than ``k`` chunks of one page.
        """
        return self.search_many(
            [query], k, filter, hybrid, rerank, candidates, distinct, rerank_weight
        )[0]

    def search_many(
        self,
        queries: list[str],
        k: int = 10,
        filter: dict[str, Any] | None = None,
        hybrid: Any = False,
        rerank: Any = False,
        candidates: int | None = None,
        distinct: str | None = None,
        rerank_weight: float = 1.0,
    ) -> list[list[Hit]]:
        """:meth:`search` for several queries at once (one embedding batch)."""
        if not 0 <= rerank_weight <= 1:
            raise KnowledgeBaseError(f"rerank_weight must be in [0, 1], got {rerank_weight}.")
        rerank = (rerank, rerank_weight) if rerank is not False and rerank is not None else False
        if not all(isinstance(q, str) for q in queries):
            raise KnowledgeBaseError("Queries must be strings.")
        if distinct is None:
            return self._search(list(queries), None, k, filter, hybrid, rerank, candidates)
        vectors = self.embedder.encode(list(queries), progress=False) if len(self) else None
        depth = max(k * 4, candidates or 0)
        while True:  # deepen until every query has k distinct values, or the base runs out
            found = self._search(list(queries), vectors, depth, filter, hybrid, rerank, depth)
            kept = [_distinct(hits, distinct)[:k] for hits in found]
            if all(len(h) == k for h in kept) or depth >= len(self):
                return kept
            depth *= 4

    def search_by_vector(
        self, vectors: np.ndarray, k: int = 10, filter: dict[str, Any] | None = None
    ) -> list[list[Hit]]:
        """Dense search with query vectors you embedded yourself (one row per query)."""
        queries = [""] * len(vectors)
        return self._search(queries, np.asarray(vectors, dtype=np.float32), k, filter)

    def _search(
        self,
        queries: list[str],
        vectors: np.ndarray | None,  # embedded from ``queries`` when None
        k: int,
        filter: dict[str, Any] | None,
        hybrid: Any = False,
        rerank: Any = False,
        candidates: int | None = None,
    ) -> list[list[Hit]]:
        if k < 1:
            raise KnowledgeBaseError(f"k must be at least 1, got {k}.")
        if candidates is not None and candidates < k:
            raise KnowledgeBaseError(f"candidates must be at least k ({k}), got {candidates}.")
        if self._ensure_index() is None:  # nothing indexed yet
            return [[] for _ in queries]
        allowed = self.store.ids_matching(filter) if filter else None
        if allowed is not None and not allowed:
            return [[] for _ in queries]
        fusion = Fusion.of(hybrid) if hybrid is not False and hybrid is not None else None
        depth = (candidates or k * 4) if (fusion or rerank) else k
        if vectors is None:
            vectors = self.embedder.encode(queries, progress=False)
        dense = self._dense(vectors, depth, allowed)
        results = []
        for query, ranked in zip(queries, dense, strict=True):
            if fusion is not None:
                sparse = self._sparse(query, depth, allowed)
                weights = [fusion.dense_weight, fusion.sparse_weight]
                ranked = fuse([ranked, sparse], weights, fusion.rrf_k)
            rows = self.store.rows(i for i, _ in ranked)
            hits = [
                Hit(row[2], score, row[1], (row[3], row[4]), None, i, row[5])
                for i, score in ranked
                if (row := rows.get(i)) is not None
            ]
            if rerank:
                hits = self._rerank(query, hits, rerank)
            results.append(hits[:k])
        return results

    def _dense(
        self, vectors: np.ndarray, k: int, allowed: list[int] | None
    ) -> list[list[tuple[int, float]]]:

        index = self._ensure_index()
        if vectors.shape[1] != index.d:
            raise KnowledgeBaseError(
                f"Query vectors have {vectors.shape[1]} dimensions, the index {index.d}: the "
                "embedder does not match this knowledge base."
            )
        k = min(k, index.ntotal if allowed is None else len(allowed))
        scores, ids = search_index(index, vectors, k, allowed)
        if self.resolved_index_type != "flat" and (ids < 0).any():
            # an approximate index may find fewer than k (few probed lists, duplicate vectors):
            # answer those queries exactly rather than return short lists
            short = np.where((ids < 0).any(1))[0]
            exact_scores, exact_ids = search_index(self._exact_index(), vectors[short], k, allowed)
            scores[short], ids[short] = exact_scores, exact_ids
        # tolist() converts in C; iterating numpy scalars costs more than the search at batch 1
        return [
            [(i, s) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True)
        ]

    def _exact_index(self) -> Any:
        if self._exact is None:
            ids, vectors = self.store.all_vectors()
            self._exact = build_index("flat", vectors, ids, {"dimension": self.dimension})
        return self._exact

    def _sparse(self, query: str, k: int, allowed: list[int] | None) -> list[tuple[int, float]]:
        if self._bm25 is None:  # built on first hybrid query; dropped on every write
            self._bm25 = BM25Ranker(*self.store.all_texts())
        return self._bm25.top(query, k, allowed)

    def _rerank(self, query: str, hits: list[Hit], setting: tuple[Any, float]) -> list[Hit]:
        model, weight = setting
        if model is True:
            raise KnowledgeBaseError(
                "rerank=True: promptkit ships no trained reranker, and an untrained ranking head "
                "ranks at random. " + HOW_TO_TRAIN
            )
        reranker = self._reranker
        current = reranker.source if reranker is not None else None
        if reranker is None or (
            current is not model and not (isinstance(model, str) and current == model)
        ):
            reranker = self._reranker = CrossEncoderReranker(model)
        return reranker.rerank(query, hits, weight)

    def training_pairs(
        self,
        records: Iterable[dict[str, Any]],
        query_field: str = "question",
        gold_field: str = "passage_id",
        gold_key: str = "heading",
    ) -> list[dict[str, str]]:
        """(query, passage) records for a retrieval or rerank task from labelled questions.

        Each record names its answer's section in ``gold_field``; the passage is that section's
        first chunk (chunks whose metadata ``gold_key`` equals the value), exactly as this
        knowledge base stores it. Records whose section is not here are skipped with a warning.
        """
        import warnings

        records = list(records)
        out, missing = [], 0
        for record in records:
            ids = self.store.ids_matching({gold_key: record.get(gold_field)})
            if not ids:
                missing += 1
                continue
            first = self.store.fetch([min(ids)])[min(ids)]  # chunks are stored in text order
            out.append({"query": str(record[query_field]), "passage": first["text"]})
        if missing:
            warnings.warn(
                f"{missing} of {len(records)} records name a {gold_key!r} this knowledge base "
                "does not hold; they were skipped.",
                stacklevel=2,
            )
        return out

    # ---- information --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "documents": self.store.document_count(),
            "chunks": self.store.count(),
            "embedder": self.embedder_name,
            "dimension": self.dimension,
            "index": self.resolved_index_type,
            "recall_at_10": self.recall_at_10,
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "exact_below": EXACT_BELOW,
        }

    def __len__(self) -> int:
        return self.store.count()

    def __repr__(self) -> str:
        return f"KnowledgeBase({json.dumps(self.stats(), default=str)})"


def _distinct(hits: list[Hit], key: str) -> list[Hit]:
    """The first (best) hit for each value of ``key`` (``"source"`` or a metadata field)."""
    seen: set[Any] = set()
    out = []
    for hit in hits:
        value = hit.source if key == "source" else json.dumps(hit.metadata.get(key), default=str)
        if value not in seen:
            seen.add(value)
            out.append(hit)
    return out

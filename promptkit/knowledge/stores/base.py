"""The ``VectorStore`` contract: what a knowledge base needs from the place its chunks live.

A store holds chunks (id, source, text, span, metadata and one vector each) and the documents
they came from (source → content hash, for incremental re-indexing). Every write is one commit:
after a crash a store reopens at its previous commit, never half of one. ``KnowledgeBase`` does
loading, chunking, embedding, fusion and reranking above this line, so every backend serves all
of it; ``tests/test_stores.py`` is the conformance suite each backend passes.

Filters are dicts: ``{"key": value}`` equality, ``{"key": [a, b]}`` membership and
``{"key": {"gte": 1, "lt": 5}}`` ranges on metadata fields; ``source`` is the document path.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from promptkit.errors import KnowledgeBaseError

OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "ne": "!="}
Row = tuple[int, str, str, int, int, str]  # id, source, text, start, end, metadata json
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def text_hash(text: str) -> str:
    """The key of a chunk's text in the embedding cache (128 bits of its sha256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def chunk_id(source: str, start: int, digest: str) -> int:
    """A chunk's id: the same chunk of the same document gets the same id in every store and
    every build (one process or a Ray cluster), so writes are upserts."""
    key = f"{source}\x00{start}\x00{digest}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 4  # 60 bits, positive


@dataclass
class StoredChunk:
    id: int
    source: str
    text: str
    start: int
    end: int
    text_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class DocumentRecord:
    source: str
    content_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)


def unique_chunks(
    chunks: list[StoredChunk], vectors: np.ndarray
) -> tuple[list[StoredChunk], np.ndarray]:
    """``chunks`` with one entry per id (the last one wins, as upserts in order would)."""
    last = {c.id: i for i, c in enumerate(chunks)}
    if len(last) == len(chunks):
        return chunks, vectors
    keep = sorted(last.values())
    return [chunks[i] for i in keep], np.asarray(vectors)[keep]


def check_filter(where: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """``where`` as (field, operator, value) conditions: operator is ``=``, ``in`` or one of
    :data:`OPERATORS`' symbols. Raises on a field name that is not plain or an unknown operator."""
    if not isinstance(where, dict):
        raise KnowledgeBaseError(f"A filter is a dict of field conditions, not {where!r}.")
    conditions = []
    for key, condition in where.items():
        if not isinstance(key, str) or not _FIELD.match(key):
            raise KnowledgeBaseError(f"Filter key {key!r} must be a plain field name.")
        if isinstance(condition, dict):
            for op, value in condition.items():
                if op not in OPERATORS:
                    raise KnowledgeBaseError(
                        f"Filter operator {op!r} on {key!r} is not one of {sorted(OPERATORS)}."
                    )
                conditions.append((key, OPERATORS[op], value))
        elif isinstance(condition, (list, tuple, set)):
            conditions.append((key, "in", list(condition)))
        else:
            conditions.append((key, "=", condition))
    return conditions


class VectorStore(ABC):
    """Chunks with vectors and metadata, searchable by vector, by BM25 and by both."""

    name: str = "store"

    # ---- identity -----------------------------------------------------------------------------

    @property
    @abstractmethod
    def info(self) -> dict[str, Any]:
        """What the store records about its vectors: ``embedder``, ``fingerprint``,
        ``dimension`` (None until the first write)."""

    @abstractmethod
    def bind(self, embedder: str, fingerprint: str | None, dimension: int) -> None:
        """Record whose vectors these are (or, replacing every vector, change it)."""

    def check(self, embedder: str | None = None, dimension: int | None = None) -> None:
        """Raise if this store's vectors come from another embedder or have another size."""
        info = self.info
        if embedder is not None and info.get("embedder") not in (None, embedder):
            raise KnowledgeBaseError(
                f"This {self.name} store holds vectors from embedder {info['embedder']!r} "
                f"({info.get('dimension')} dimensions), not {embedder!r}. Re-embed it "
                "(kb.reembed) or open it without naming an embedder."
            )
        if dimension is not None and info.get("dimension") not in (None, dimension):
            raise KnowledgeBaseError(
                f"Vectors have {dimension} dimensions, this {self.name} store "
                f"{info['dimension']}: the embedder does not match it."
            )

    # ---- writes (each one commit) -------------------------------------------------------------

    @abstractmethod
    def write(
        self,
        chunks: list[StoredChunk],
        vectors: np.ndarray,
        documents: Iterable[DocumentRecord] = (),
        replace_sources: Iterable[str] = (),
    ) -> None:
        """Drop every chunk and document of ``replace_sources``, then upsert ``chunks`` (by id)
        with their ``vectors`` and ``documents`` (by source)."""

    @abstractmethod
    def delete(
        self,
        ids: Iterable[int] = (),
        where: dict[str, Any] | None = None,
        sources: Iterable[str] = (),
    ) -> int:
        """Remove chunks by id, by filter, and whole documents by source; returns chunks removed."""

    @abstractmethod
    def clear(self) -> None:
        """Remove every chunk and document (the store itself stays)."""

    @abstractmethod
    def optimize(self) -> None:
        """Retrain and compact the index (after many deletions, or to tune it afresh)."""

    # ---- reads --------------------------------------------------------------------------------

    @abstractmethod
    def search(
        self, vectors: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[list[tuple[int, float]]]:
        """The ``k`` nearest chunks (id, inner product) per query vector, among those matching
        ``where`` (a pre-filter: a selective filter still returns its k matches)."""

    @abstractmethod
    def search_text(
        self, query: str, k: int, where: dict[str, Any] | None = None
    ) -> list[tuple[int, float]]:
        """The ``k`` best chunks for ``query`` by BM25 (id, score), best first."""

    def hybrid(
        self,
        query: str,
        vector: np.ndarray,
        k: int,
        where: dict[str, Any] | None,
        weights: tuple[float, float],
        rrf_k: float,
    ) -> list[tuple[int, float]]:
        """Dense and BM25 results fused by weighted reciprocal rank fusion."""
        from promptkit.knowledge.ranking import fuse

        dense = self.search(vector[None, :], k, where)[0]
        sparse = self.search_text(query, k, where)
        return fuse([dense, sparse], list(weights), rrf_k)

    @abstractmethod
    def rows(self, ids: Iterable[int]) -> dict[int, Row]:
        """Raw rows ``(id, source, text, start, end, metadata_json)`` of the chunks ``ids``."""

    def fetch(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Chunks by id as dicts with parsed metadata."""
        import json

        return {
            cid: {
                "id": cid,
                "source": source,
                "text": text,
                "span": (a, b),
                "metadata": json.loads(meta),
            }
            for cid, (_, source, text, a, b, meta) in self.rows(ids).items()
        }

    @abstractmethod
    def ids_matching(self, where: dict[str, Any]) -> list[int]:
        """Ids of every chunk matching the filter."""

    @abstractmethod
    def vectors(self, ids: list[int]) -> np.ndarray:
        """The stored vectors of chunks ``ids``, in that order."""

    @abstractmethod
    def cached_embeddings(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Stored vectors by chunk text hash: re-indexing reuses them instead of embedding."""

    @abstractmethod
    def iter_chunks(self, batch: int = 4096) -> Iterator[list[StoredChunk]]:
        """Every chunk, in batches (order unspecified)."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def documents(self) -> list[DocumentRecord]: ...

    def document_hashes(self) -> dict[str, str]:
        return {d.source: d.content_hash for d in self.documents()}

    def document_count(self) -> int:
        return len(self.documents())

    def all_texts(self) -> tuple[list[int], list[str]]:
        pairs = sorted((c.id, c.text) for batch in self.iter_chunks() for c in batch)
        return [i for i, _ in pairs], [t for _, t in pairs]

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every id and vector (sorted by id). Reads the whole collection into memory."""
        ids = sorted(c.id for batch in self.iter_chunks() for c in batch)
        dim = self.info.get("dimension") or 0
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        return np.asarray(ids, np.int64), self.vectors(ids)

    # ---- lifecycle ----------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Catch up with commits other processes made; True if there were any."""
        return False

    def stats(self) -> dict[str, Any]:
        return {"store": self.name, "chunks": self.count()}

    @abstractmethod
    def close(self) -> None:
        """Release files and connections."""

"""Filling a knowledge base: documents are chunked, embedded (reusing stored vectors of
unchanged text, with several processes or on a Ray cluster) and written to the store in one
commit. ``KnowledgeBase`` takes these methods from :class:`Ingesting`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from promptkit.errors import KnowledgeBaseError
from promptkit.knowledge.chunking import ChunkingConfig
from promptkit.knowledge.loaders import Document, scan_folder
from promptkit.knowledge.parallel import chunk_documents, embed_with_ray, encode_with_workers
from promptkit.knowledge.stores import DocumentRecord, StoredChunk, chunk_id, text_hash


@dataclass
class UpdateStats:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0


class Ingesting:
    """The writing half of :class:`~promptkit.knowledge.KnowledgeBase`."""

    store: Any
    embedder: Any
    embedder_name: str
    chunking: ChunkingConfig
    source: str | None
    strict: bool
    workers: int

    if TYPE_CHECKING:

        def _bind(self) -> None: ...  # KnowledgeBase's: record the embedder with the store

    def _ingest(
        self,
        documents: list[Document],
        replace: Iterable[str] = (),
        vectors: np.ndarray | None = None,
    ) -> tuple[int, int]:
        """Chunk and embed ``documents`` (reusing stored vectors), replacing ``replace`` sources;
        with ``vectors``, each document is one chunk with the given embedding."""
        self._bind()
        if vectors is None:
            chunks = chunk_documents(documents, self.embedder, self.chunking)
            hashes = [c.text_hash for c in chunks]
            cached = self.store.cached_embeddings(hashes)
            missing = sorted(
                {c.text_hash: c.text for c in chunks if c.text_hash not in cached}.items()
            )
            fresh = encode_with_workers(self.embedder, [t for _, t in missing], self.workers)
            cached.update({h: v for (h, _), v in zip(missing, fresh, strict=True)})
            matrix = np.stack([cached[h] for h in hashes]) if chunks else None
            embedded = len(missing)
        else:
            chunks = []
            for doc in documents:
                digest = text_hash(doc.text)
                chunks.append(
                    StoredChunk(
                        chunk_id(doc.source, 0, digest),
                        doc.source,
                        doc.text,
                        0,
                        len(doc.text),
                        digest,
                        dict(doc.metadata),
                    )
                )
            matrix, embedded = np.asarray(vectors, dtype=np.float32), len(chunks)
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            matrix = matrix / np.maximum(norms, 1e-12)  # inner product is cosine similarity
        dim = self.store.info.get("dimension") or 1
        self.store.write(
            chunks,
            matrix if matrix is not None else np.zeros((0, dim), np.float32),
            [DocumentRecord(d.source, d.content_hash, d.metadata) for d in documents],
            replace,
        )
        return embedded, len(chunks) - embedded

    def _fill_with_ray(self, source: Any, workers: int, address: str | None) -> None:
        if isinstance(source, (str, Path)):
            documents, _ = scan_folder(Path(source), strict=self.strict)
        else:
            documents = [_as_document(i, r) for i, r in enumerate(source)]
        self._bind()
        for chunks, vectors in embed_with_ray(
            documents, self.embedder_name, self.chunking, workers, address
        ):
            self.store.write(chunks, vectors)
        dim = self.store.info.get("dimension") or 1
        records = [DocumentRecord(d.source, d.content_hash, d.metadata) for d in documents]
        self.store.write([], np.zeros((0, dim), np.float32), records)

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

    def _add_records(self, records: Iterable[Any], vectors: np.ndarray | None = None) -> int:
        documents = [_as_document(number, record) for number, record in enumerate(records)]
        if vectors is not None and len(vectors) != len(documents):
            raise KnowledgeBaseError(
                f"{len(documents)} records but {len(vectors)} vectors: give one vector per record."
            )
        embedded, _ = self._ingest(
            documents, replace=[d.source for d in documents], vectors=vectors
        )
        return embedded


def _as_document(number: int, record: Any) -> Document:
    """A record (a string, or a dict with ``text``, optional ``source`` and metadata)."""
    if isinstance(record, str):
        record = {"text": record}
    if not isinstance(record, Mapping) or not isinstance(record.get("text"), str):
        raise KnowledgeBaseError(
            f"Record {number} must be a string or a dict with a 'text' string."
        )
    meta = {k: v for k, v in record.items() if k not in ("text", "source")}
    doc = Document(record["text"], "", meta)
    doc.source = str(record.get("source") or f"record:{doc.content_hash[:16]}")
    return doc

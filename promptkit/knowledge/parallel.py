"""Embedding a large corpus with more than one process: several on one machine, or a Ray cluster.

``workers=N`` encodes with sentence-transformers' multi-process pool on this machine.
``engine="ray"`` runs chunking and embedding as a Ray Data ``map_batches`` stage on a Ray cluster
(an existing one at ``ray_address``, else a local instance), each worker loading the embedder
once; the driver writes the results to the knowledge base's store as they arrive. Chunk ids
depend only on the document and the chunk, so every route builds the same knowledge base.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from promptkit.errors import KnowledgeBaseError
from promptkit.knowledge.chunking import ChunkingConfig, chunk_text
from promptkit.knowledge.loaders import Document
from promptkit.knowledge.stores.base import StoredChunk, chunk_id, text_hash

ENGINES = ("local", "ray")


def encode_with_workers(embedder: Any, texts: list[str], workers: int) -> np.ndarray:
    """``embedder.encode(texts)`` spread over ``workers`` processes on this machine."""
    if workers <= 1 or len(texts) < 2 * embedder.batch_size or embedder.onnx is not None:
        return embedder.encode(texts)  # onnxruntime already runs on every core
    model = embedder.model
    devices = [embedder.device] * workers
    pool = model.start_multi_process_pool(target_devices=devices)
    try:
        vectors = model.encode(
            texts,
            pool=pool,
            batch_size=embedder.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            chunk_size=max(embedder.batch_size, len(texts) // (workers * 4) or 1),
        )
    finally:
        model.stop_multi_process_pool(pool)
    embedder.texts_encoded += len(texts)
    return np.asarray(vectors, dtype=np.float32)


def chunk_documents(
    documents: list[Document], embedder: Any, chunking: ChunkingConfig
) -> list[StoredChunk]:
    """Every chunk of ``documents``, with the ids every build gives them."""
    limit = min(chunking.max_tokens, embedder.max_tokens)
    config = chunking.model_copy(update={"max_tokens": limit})
    # most documents of a corpus of short texts are one chunk, whose count is that of the whole
    # text: count those in one tokenizer call (one call per text cost 1.5 s of a 26 s build of
    # 10,201 reviews); any other piece is counted when the chunker asks
    whole = [doc.text for doc in documents]
    known = dict(zip(whole, embedder.count_tokens_many(whole), strict=True))

    def count(text: str) -> int:
        found = known.get(text)
        return found if found is not None else int(embedder.count_tokens(text))

    out = []
    for doc in documents:
        for chunk in chunk_text(doc.text, count, config, doc.metadata):
            digest = text_hash(chunk.text)
            out.append(
                StoredChunk(
                    chunk_id(doc.source, chunk.start, digest),
                    doc.source,
                    chunk.text,
                    chunk.start,
                    chunk.end,
                    digest,
                    chunk.metadata,
                )
            )
    return out


class _ChunkAndEmbed:
    """The Ray Data stage: documents in, chunks with vectors out (one embedder per worker)."""

    def __init__(self, embedder: str, chunking: dict[str, Any], device: str = "cpu") -> None:
        from promptkit.knowledge.embedder import get_embedder

        self.embedder = get_embedder(embedder, device)
        self.chunking = ChunkingConfig(**chunking)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        documents = [
            Document(str(text), str(source), json.loads(str(meta)))
            for text, source, meta in zip(
                batch["text"], batch["source"], batch["metadata"], strict=True
            )
        ]
        chunks = chunk_documents(documents, self.embedder, self.chunking)
        vectors = self.embedder.encode([c.text for c in chunks], progress=False)
        return {
            "id": np.array([c.id for c in chunks], dtype=np.int64),
            "source": [c.source for c in chunks],
            "text": [c.text for c in chunks],
            "start": np.array([c.start for c in chunks], dtype=np.int64),
            "end": np.array([c.end for c in chunks], dtype=np.int64),
            "text_hash": [c.text_hash for c in chunks],
            "metadata": [json.dumps(c.metadata, default=str) for c in chunks],
            "vector": vectors.reshape(len(chunks), -1),
        }


def embed_with_ray(
    documents: list[Document],
    embedder: str,
    chunking: ChunkingConfig,
    workers: int = 2,
    address: str | None = None,
    batch_size: int = 16,
) -> Iterator[tuple[list[StoredChunk], np.ndarray]]:
    """Chunk and embed ``documents`` on a Ray cluster; yields (chunks, vectors) batches."""
    try:
        import ray
    except ImportError as exc:
        raise KnowledgeBaseError("engine='ray' needs Ray: pip install 'promptkit[ray]'.") from exc
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
    from pathlib import Path

    from promptkit import models

    resolved = models.resolve(embedder)  # workers load the same weights from this path
    if not Path(resolved).exists():
        resolved = embedder
    items = [
        {"text": d.text, "source": d.source, "metadata": json.dumps(d.metadata, default=str)}
        for d in documents
    ]
    dataset = ray.data.from_items(items).map_batches(
        _ChunkAndEmbed,
        fn_constructor_kwargs={"embedder": resolved, "chunking": chunking.model_dump()},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=workers,
        num_cpus=1,
    )
    for batch in dataset.iter_batches(batch_size=1024, batch_format="numpy"):
        chunks = [
            StoredChunk(int(i), str(s), str(t), int(a), int(b), str(h), json.loads(str(m)))
            for i, s, t, a, b, h, m in zip(
                batch["id"],
                batch["source"],
                batch["text"],
                batch["start"],
                batch["end"],
                batch["text_hash"],
                batch["metadata"],
                strict=True,
            )
        ]
        yield chunks, np.asarray(batch["vector"], dtype=np.float32).reshape(len(chunks), -1)

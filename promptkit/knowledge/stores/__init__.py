"""Where a knowledge base's chunks live: ``faiss`` (embedded, the default) or ``milvus``.

``store=`` takes ``"faiss"``, ``"milvus"`` (milvus-lite: one local file, no server),
``"milvus://host:19530"`` or ``"http://host:19530"`` (a Milvus Standalone or Distributed
cluster; add ``/collection`` to name the collection), or a dict of the same
(``{"backend": "milvus", "uri": ..., "collection": ..., "token": ...}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptkit.errors import KnowledgeBaseError
from promptkit.knowledge.stores.base import (
    DocumentRecord,
    StoredChunk,
    VectorStore,
    check_filter,
    chunk_id,
    text_hash,
)

BACKENDS = ("faiss", "milvus")
DEFAULT_COLLECTION = "promptkit"

__all__ = [
    "BACKENDS",
    "DocumentRecord",
    "StoredChunk",
    "VectorStore",
    "check_filter",
    "chunk_id",
    "copy_store",
    "open_store",
    "parse_store",
    "text_hash",
]


def parse_store(spec: str | dict[str, Any] | None) -> dict[str, Any]:
    """A store setting as the dict a manifest records."""
    if spec is None:
        return {"backend": "faiss"}
    if isinstance(spec, dict):
        config = dict(spec)
        if config.get("backend") not in BACKENDS:
            raise KnowledgeBaseError(
                f"store backend must be one of {list(BACKENDS)}, got {config.get('backend')!r}."
            )
        return config
    if not isinstance(spec, str):
        raise KnowledgeBaseError(f"store= takes a name, a URI or a dict, not {spec!r}.")
    if spec in BACKENDS:
        return {"backend": spec}
    for scheme in ("milvus://", "http://", "https://"):
        if spec.startswith(scheme):
            rest = spec[len(scheme) :]
            host, _, collection = rest.partition("/")
            if not host:
                raise KnowledgeBaseError(f"{spec!r} names no host: use milvus://host:19530.")
            protocol = "https://" if scheme == "https://" else "http://"
            return {
                "backend": "milvus",
                "uri": protocol + host,
                "collection": collection.strip("/") or DEFAULT_COLLECTION,
            }
    raise KnowledgeBaseError(
        f"Unknown store {spec!r}: use 'faiss', 'milvus' (a local milvus-lite file) or "
        "'milvus://host:19530[/collection]'."
    )


def open_store(
    config: dict[str, Any],
    root: Path,
    index: str = "auto",
    index_params: dict[str, Any] | None = None,
    verify: bool = False,
) -> VectorStore:
    """Open (creating if needed) the store ``config`` describes, for the knowledge base ``root``."""
    if config["backend"] == "faiss":
        from promptkit.knowledge.stores.faiss_store import FaissStore

        store = FaissStore(root, index, index_params)
        if verify:
            store._load(verify=True)
        return store
    from promptkit.knowledge.stores.milvus_store import MilvusStore

    if not config.get("uri"):
        root.mkdir(parents=True, exist_ok=True)
    uri = config.get("uri") or str(root / "milvus.db")
    return MilvusStore(uri, config.get("collection") or DEFAULT_COLLECTION, config.get("token"))


def copy_store(
    source: VectorStore, target: VectorStore, encode: Any = None, progress: bool = False
) -> None:
    """Every chunk and document of ``source`` into ``target``; ``encode(texts)`` gives new
    vectors (re-embedding) instead of the stored ones."""
    from tqdm.auto import tqdm

    bar = tqdm(total=source.count(), desc="Copying chunks", unit="chunk", disable=not progress)
    for batch in source.iter_chunks(4096):
        if encode is not None:
            vectors = encode([c.text for c in batch])
        else:
            vectors = source.vectors([c.id for c in batch])
        target.write(batch, vectors)
        bar.update(len(batch))
    bar.close()
    documents = source.documents()
    if documents:
        import numpy as np

        target.write([], np.zeros((0, target.info.get("dimension") or 1), np.float32), documents)

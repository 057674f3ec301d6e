"""``KnowledgeBase``: documents → chunks → embeddings → a vector store, searched with filters.

A knowledge base is a directory: ``manifest.json`` (the embedder, chunking and store settings)
and the store's files (``faiss``, the default: SQLite + vector files + index; ``milvus``: a
milvus-lite file, or nothing local when the store is a Milvus cluster). Re-indexing is
incremental by content hash; a file lock serializes writers, every write is one commit of the
store, and a build happens in a temporary directory moved into place when done, so a crash
leaves the previous version searchable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from promptkit.artifacts import FORMAT_VERSION, _fsync_dir, _swap_into_place, read_manifest
from promptkit.config import validate
from promptkit.errors import KnowledgeBaseError
from promptkit.knowledge.chunking import ChunkingConfig
from promptkit.knowledge.embedder import Embedder, get_embedder
from promptkit.knowledge.index import EXACT_BELOW, index_types
from promptkit.knowledge.ingest import Ingesting, UpdateStats
from promptkit.knowledge.parallel import (
    ENGINES,
)
from promptkit.knowledge.ranking import CrossEncoderReranker
from promptkit.knowledge.searching import Searching
from promptkit.knowledge.stores import (
    VectorStore,
    copy_store,
    open_store,
    parse_store,
)

KIND = "knowledge_base"
STORE_FORMAT = 2  # knowledge bases before it kept every vector in one SQLite file


class KnowledgeBase(Ingesting, Searching):
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
        store: str | dict[str, Any] | None = None,
    ) -> None:
        if index != "auto" and index not in index_types:
            raise KnowledgeBaseError(index_types.unknown_message(index))
        self.embedder_name = embedder
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
        self.store_config = parse_store(store)
        self.path: Path | None = None
        self._store: VectorStore | None = None
        self._embedder: Embedder | None = None
        self._reranker: CrossEncoderReranker | None = None
        self.workers = 1  # processes that embed on this machine

    # ---- the store ----------------------------------------------------------------------------

    @property
    def store(self) -> VectorStore:
        """Where the chunks live. An unsaved knowledge base keeps its store in a temporary
        directory that goes away with the object."""
        if self._store is None:
            scratch = Path(tempfile.mkdtemp(prefix="promptkit-kb-"))
            config = self.store_config
            if config["backend"] == "milvus" and config.get("uri"):
                raise KnowledgeBaseError(
                    "A knowledge base on a Milvus cluster needs a directory for its manifest: "
                    "build it with path=..."
                )
            store = self._open(scratch)
            weakref.finalize(self, _close_and_remove, store, scratch)
            return store
        return self._store

    def _open(self, root: Path, verify: bool = False) -> VectorStore:
        self._store = open_store(
            self.store_config, root, self.index_type, self.index_params, verify=verify
        )
        return self._store

    @property
    def dimension(self) -> int | None:
        return self.store.info.get("dimension")

    @property
    def embedder_fingerprint(self) -> str | None:
        return self.store.info.get("fingerprint")

    @property
    def recall_at_10(self) -> float | None:
        return self.store.stats().get("recall_at_10")

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
        store: str | dict[str, Any] | None = None,
        vectors: np.ndarray | None = None,
        workers: int = 1,
        engine: str = "local",
        ray_address: str | None = None,
    ) -> KnowledgeBase:
        """Index a folder (or an iterable of records/strings). With ``path``, the knowledge base
        lives in that directory (built aside and moved into place when complete).

        ``device`` is where the embedder runs ("auto": CUDA if present, else CPU). ``store`` is
        ``"faiss"`` (default), ``"milvus"`` or a Milvus URI (see :mod:`promptkit.knowledge.stores`).
        ``vectors`` gives the records' embeddings (one row per record, each record one chunk).
        ``workers`` embeds with that many processes on this machine; ``engine="ray"`` chunks and
        embeds on a Ray cluster (``ray_address``, else a local one with ``workers`` workers).
        """
        if engine not in ENGINES:
            raise KnowledgeBaseError(f"engine must be one of {list(ENGINES)}, got {engine!r}.")
        if workers < 1:
            raise KnowledgeBaseError(f"workers must be at least 1, got {workers}.")
        folder = source if isinstance(source, (str, Path)) else None
        kb = cls(embedder, index, index_params, chunking, folder, strict, device, store)
        kb.workers = workers

        def fill() -> None:
            if engine == "ray":
                kb._fill_with_ray(source, max(workers, 2), ray_address)
            elif folder is not None:
                kb._sync_folder()
            else:
                kb._add_records(source, vectors)  # type: ignore[arg-type]

        if path is None:
            fill()
            return kb
        target = Path(path).expanduser().resolve()
        staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            kb._open(staging)
            fill()
            kb._write_manifest(staging)
            kb.store.close()
            _fsync_dir(staging)
            _swap_into_place(staging, target)
        except BaseException:
            if kb._store is not None:
                kb._store.close()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        kb._open(target)
        kb.path = target
        return kb

    @classmethod
    def load(
        cls,
        path: str | Path,
        embedder: str | None = None,
        device: str = "auto",
        verify: bool = False,
    ) -> KnowledgeBase:
        """Open a saved knowledge base; ``embedder``, if given, must match the one it used.

        Opening checks file sizes; ``verify=True`` also checks every stored vector's sha256.
        """
        root = Path(path).expanduser().resolve()
        manifest = read_manifest(root, kind=KIND)
        config, meta = manifest["config"], manifest["meta"]
        if meta.get("store_format") != STORE_FORMAT:
            raise KnowledgeBaseError(
                f"{root} was written by an earlier promptkit that kept every vector in memory. "
                f"Rebuild it: promptkit kb build {config.get('source') or '<folder>'} --out {root}"
            )
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
            config.get("store"),
        )
        kb.source = config.get("source")
        kb._open(root, verify=verify)
        kb.path = root
        return kb

    def _write_manifest(self, root: Path) -> None:
        """The manifest names settings, not files: the store checks its own files on open."""
        import os
        import time

        from promptkit._version import __version__

        manifest = {
            "format_version": FORMAT_VERSION,
            "promptkit_version": __version__,
            "kind": KIND,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": {
                "embedder": self.embedder_name,
                "index": self.index_type,
                "index_params": self.index_params,
                "chunking": self.chunking.model_dump(),
                "source": self.source,
                "strict": self.strict,
                "store": self.store_config,
            },
            "meta": {
                "store_format": STORE_FORMAT,
                "dimension": self.dimension,
                "embedder_fingerprint": self.embedder_fingerprint,
            },
            "files": {},
        }
        temporary = root / f".manifest.{uuid.uuid4().hex[:8]}"
        temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, root / "manifest.json")

    # ---- embedding ----------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            embedder = get_embedder(self.embedder_name, self.device)
            info = self.store.info
            if info.get("dimension") not in (None, embedder.dimension):
                raise KnowledgeBaseError(
                    f"Embedder {self.embedder_name!r} now gives {embedder.dimension}-dim "
                    f"vectors, but this knowledge base holds {info['dimension']}-dim ones. "
                    "Rebuild it."
                )
            found = embedder.fingerprint
            if info.get("fingerprint") not in (None, found):
                raise KnowledgeBaseError(
                    f"The embedder {self.embedder_name!r} has changed since this knowledge base "
                    f"was embedded (weights {found}, vectors from {info['fingerprint']}); "
                    "its vectors would not match new queries. Call kb.reembed(<embedder>) to "
                    "embed it again."
                )
            self._embedder = embedder
        return self._embedder

    def _bind(self) -> None:
        """Record this embedder with the store before its first vectors go in."""
        info = self.store.info
        if info.get("dimension") is None:
            embedder = self.embedder
            self.store.bind(self.embedder_name, embedder.fingerprint, embedder.dimension)

    def reembed(self, embedder: str, progress: bool = True) -> KnowledgeBase:
        """Embed every chunk again with ``embedder`` (an alias, path, or a saved retrieval
        adapter's directory) and rebuild the index; chunks and metadata stay as they are.

        The new vectors go into a fresh store that replaces the old one only when complete, so
        none from the old embedder is left to mix with the new ones.
        """
        new = get_embedder(embedder, self.device)

        def change() -> None:
            old = self.store
            root = self.path or Path(tempfile.mkdtemp(prefix="promptkit-kb-"))
            staging = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
            config = dict(self.store_config)
            if config.get("uri"):  # a cluster: the new vectors go to a new collection
                config["collection"] = f"{config['collection']}_{uuid.uuid4().hex[:8]}"
            fresh = open_store(config, staging, self.index_type, self.index_params)
            fresh.bind(embedder, new.fingerprint, new.dimension)
            copy_store(
                old, fresh, encode=lambda t: new.encode(t, progress=False), progress=progress
            )
            self.embedder_name, self._embedder = embedder, new
            previous, self.store_config = self.store_config, config
            self._store = fresh
            if self.path is not None:
                self._write_manifest(staging)
            fresh.close()
            old.close()
            if previous.get("uri"):
                _drop_collection(previous)
            _swap_into_place(staging, root)
            self._open(root)
            if self.path is None:
                weakref.finalize(self, _close_and_remove, self._store, root)

        self._transaction(change)
        return self

    # ---- writing ------------------------------------------------------------------------------

    def _transaction(self, change: Any) -> Any:
        """Apply ``change`` under the directory's lock, on the latest committed state."""
        if self.path is None:
            return change()
        from filelock import FileLock

        with FileLock(str(self.path) + ".lock"):
            self.store.refresh()  # another writer may have committed since
            return change()

    def update(self) -> UpdateStats:
        """Re-scan the source folder: embed new and changed files, drop deleted ones."""
        return self._transaction(self._sync_folder)

    def add(self, records: Iterable[Any], vectors: np.ndarray | None = None) -> int:
        """Add records (strings, or dicts with ``text`` plus metadata); returns chunks embedded.

        With ``vectors`` (one embedding per record, from this knowledge base's embedder), each
        record is stored as one chunk with its vector and nothing is embedded.
        """
        items = list(records)
        return self._transaction(lambda: self._add_records(items, vectors))

    def delete(self, sources: Iterable[str] = (), where: dict[str, Any] | None = None) -> int:
        """Remove documents by source path, and/or chunks whose metadata match ``where``."""
        listed = list(sources)
        return self._transaction(lambda: self.store.delete(where=where, sources=listed))

    def optimize(self) -> KnowledgeBase:
        """Retrain the index on the current vectors and compact deleted ones away (additions
        and deletions never retrain; a store retrains by itself once it has doubled)."""
        self._transaction(self.store.optimize)
        return self

    def save(self, path: str | Path | None = None) -> Path:
        """Write the knowledge base to ``path`` (a copy, moved into place when complete).

        A knowledge base bound to a directory commits every change there as it happens, so
        ``save()`` without a path only rewrites the manifest. Saving elsewhere is pure: the
        object keeps working where it was; ``KnowledgeBase.load(path)`` opens the copy.
        """
        target = Path(path).expanduser().resolve() if path is not None else self.path
        if target is None:
            raise KnowledgeBaseError("save() needs a path: this knowledge base lives in memory.")
        if self.path is not None and target == self.path:
            self._write_manifest(target)
            return target
        if self.store_config.get("uri"):
            raise KnowledgeBaseError(
                "This knowledge base lives on a Milvus cluster; to copy it use migrate(...)."
            )
        return self.migrate(self.store_config, target)._detach()

    def migrate(self, store: str | dict[str, Any], path: str | Path) -> KnowledgeBase:
        """A copy of this knowledge base in another store (``"faiss"``, ``"milvus"`` or a
        Milvus URI), with its manifest at ``path``. Vectors are copied, not re-embedded."""
        from filelock import FileLock

        target = Path(path).expanduser().resolve()
        config = parse_store(store)
        copy = KnowledgeBase(
            self.embedder_name,
            self.index_type,
            self.index_params,
            self.chunking,
            None,
            self.strict,
            self.device,
            config,
        )
        copy.source = self.source
        staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            try:
                staging.mkdir()
                source = self.store
                if config == self.store_config and hasattr(source, "copy_to"):
                    source.copy_to(staging)  # the same backend: a byte copy, nothing retrained
                    fresh = copy._open(staging)
                else:
                    fresh = copy._open(staging)
                    info = source.info
                    fresh.bind(self.embedder_name, info.get("fingerprint"), info["dimension"] or 0)
                    copy_store(source, fresh, progress=True)
                copy._write_manifest(staging)
                fresh.close()
                _fsync_dir(staging)
                _swap_into_place(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        copy._open(target)
        copy.path = target
        return copy

    def _detach(self) -> Path:
        path = self.path
        self.close()
        assert path is not None
        return path

    def close(self) -> None:
        """Release the store's files and connections."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def nbytes(self) -> int:
        """Bytes the knowledge base takes on disk, everything counted."""
        return int(self.store.stats().get("bytes", 0))

    @property
    def resolved_index_type(self) -> str:
        return str(self.store.stats().get("index") or self.index_type)

    # ---- information --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        store = self.store.stats()
        return {
            "documents": self.store.document_count(),
            "chunks": self.store.count(),
            "embedder": self.embedder_name,
            "dimension": self.dimension,
            "index": store.get("index"),
            "recall_at_10": store.get("recall_at_10"),
            "store": self.store_config,
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "exact_below": EXACT_BELOW,
        } | {k: v for k, v in store.items() if k not in ("index", "recall_at_10", "store")}

    def __len__(self) -> int:
        return self.store.count()

    def __repr__(self) -> str:
        return f"KnowledgeBase({json.dumps(self.stats(), default=str)})"


def _close_and_remove(store: VectorStore, root: Path) -> None:
    store.close()
    shutil.rmtree(root, ignore_errors=True)


def _drop_collection(config: dict[str, Any]) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(config["uri"], token=config.get("token") or "")
    for name in (config["collection"], f"{config['collection']}_documents"):
        if client.has_collection(name):
            client.drop_collection(name)
    client.close()

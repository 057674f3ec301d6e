"""The embedded default store: FAISS over vectors on disk, chunks in SQLite.

Layout of the directory::

    docstore.sqlite      chunks, documents, state (the commit point)
    data.<d>.f32         float32 vectors, one row per chunk version, append-only
    data.<d>.ids         int64 chunk id of each row
    index.<m>.faiss      the main index over rows [0, main_rows) (absent for flat)

A write appends rows past the committed count, fsyncs, and commits one SQLite transaction that
records them; a crash before the commit leaves a tail that is ignored and later overwritten. Rows
added since the main index was built sit in a small exact "delta" index; rows deleted or replaced
since are masked out of the main index by id. Nothing is retrained on ``add`` or ``delete``: the
main index is rebuilt (trained, compacted) by :meth:`optimize`, or by itself once the collection
has doubled since it was trained; when the delta outgrows a tenth of the main index it is folded
in without training. Vectors are read from disk in blocks, never all resident as float32 (except
what a ``flat`` index holds: that type is for collections below 50,000 chunks).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from promptkit.errors import KnowledgeBaseError
from promptkit.knowledge.index import (
    index_types,
    search_index,
)
from promptkit.knowledge.store import DocStore
from promptkit.knowledge.stores.base import (
    DocumentRecord,
    Row,
    StoredChunk,
    VectorStore,
    unique_chunks,
)
from promptkit.knowledge.stores.faiss_maintenance import BLOCK, Maintenance, _ivf

EXACT_FILTER_BELOW = 20_000  # a filter matching fewer chunks is searched exactly, from disk


class FaissStore(Maintenance, VectorStore):
    name = "faiss"

    def __init__(
        self, root: str | Path, index: str = "auto", index_params: dict[str, Any] | None = None
    ) -> None:
        if index != "auto" and index not in index_types:
            raise KnowledgeBaseError(index_types.unknown_message(index))
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_type = index
        self.index_params = dict(index_params or {})
        self.docs = DocStore(self.root / "docstore.sqlite")
        self.trainings = 0  # main-index trainings in this process (tests count them)
        self._bm25: Any = None
        self._load()

    # ---- loading ------------------------------------------------------------------------------

    def _load(self, verify: bool = False) -> None:
        import faiss

        state = self.docs.state()
        self.state = {
            "data": 0,
            "index": 0,
            "rows": 0,
            "main_rows": 0,
            "kind": None,
            "trained_rows": 0,
            "version": 0,
            "dimension": None,
            "embedder": None,
            "fingerprint": None,
            "recall_at_10": None,
        } | state
        dim, rows = self.state["dimension"], self.state["rows"]
        for path, width in ((self._data_path("f32"), 4 * (dim or 0)), (self._data_path("ids"), 8)):
            size = path.stat().st_size if path.exists() else 0
            if size < rows * width:
                raise KnowledgeBaseError(
                    f"{path} holds {size} bytes, the knowledge base needs {rows * width}: the "
                    "file was truncated. Rebuild the knowledge base or restore it from a copy."
                )
        if verify:
            self._verify()
        self.main: Any = None
        index_file = self._index_path()
        if self.state["main_rows"]:
            try:
                self.main = faiss.read_index(str(index_file))
            except RuntimeError as exc:
                raise KnowledgeBaseError(
                    f"{index_file} could not be read ({str(exc).splitlines()[0]}). The file is "
                    "corrupted; rebuild the knowledge base or restore it from a copy."
                ) from exc
        if self.main is not None:
            self.tune(
                **{k: v for k, v in self.index_params.items() if k in ("ef_search", "nprobe")}
            )
        live = np.zeros(rows, dtype=bool)
        live[self.docs.live_rows()] = True
        self._live_count = int(live.sum())
        main_rows = self.state["main_rows"]
        ids = self._read_ids(0, rows)
        # ids whose main-index copy is stale: deleted, or replaced by a newer row
        self.dead = set(ids[:main_rows][~live[:main_rows]].tolist()) - set(
            ids[:main_rows][live[:main_rows]].tolist()
        )
        self.delta: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim or 1))
        delta_rows = np.nonzero(live[main_rows:])[0] + main_rows
        for start in range(0, len(delta_rows), BLOCK):
            part = delta_rows[start : start + BLOCK]
            self.delta.add_with_ids(self._read_rows(part), ids[part])
        self._bm25 = None
        if self._live_count != self.docs.count():
            raise KnowledgeBaseError(
                f"{self.root}: the docstore lists {self.docs.count()} chunks but the vector files "
                f"hold {self._live_count}. Rebuild the knowledge base."
            )

    def tune(self, ef_search: int | None = None, nprobe: int | None = None) -> dict[str, int]:
        """Set the main index's search effort for this process (HNSW ``ef_search``, IVF
        ``nprobe``): more is slower and finds more of the true neighbours. Returns the settings
        in force. Saved defaults come from ``index_params`` at build or load."""
        import faiss

        if self.main is None:
            return {}
        inner = (
            faiss.downcast_index(self.main.index)
            if isinstance(self.main, faiss.IndexIDMap)
            else self.main
        )
        if isinstance(inner, faiss.IndexHNSW):
            if ef_search is not None:
                inner.hnsw.efSearch = int(ef_search)
            return {"ef_search": int(inner.hnsw.efSearch)}
        ivf = _ivf(self.main)
        if isinstance(ivf, faiss.IndexIVF):
            if nprobe is not None:
                ivf.nprobe = int(nprobe)
            return {"nprobe": int(ivf.nprobe)}
        return {}

    def _verify(self) -> None:
        """Check the sha256 of every committed segment of the vector file, and of the index."""
        with open(self._data_path("f32"), "rb") as handle:
            width = 4 * (self.state["dimension"] or 0)
            for start, end, expected in self.docs.segments(self.state["data"]):
                handle.seek(start * width)
                digest = hashlib.sha256(handle.read((end - start) * width)).hexdigest()
                if digest != expected:
                    raise KnowledgeBaseError(
                        f"{self._data_path('f32')} rows {start}-{end} do not match their "
                        "recorded sha256: the file is corrupted. Rebuild the knowledge base."
                    )
        if self.state["main_rows"]:
            from promptkit.artifacts import sha256_file

            if sha256_file(self._index_path()) != self.state.get("index_sha256"):
                raise KnowledgeBaseError(
                    f"{self._index_path()} does not match its recorded sha256: it is corrupted. "
                    "Call kb.optimize() to rebuild the index from the stored vectors."
                )

    def _data_path(self, suffix: str, generation: int | None = None) -> Path:
        return (
            self.root / f"data.{self.state['data'] if generation is None else generation}.{suffix}"
        )

    def _index_path(self, generation: int | None = None) -> Path:
        return (
            self.root / f"index.{self.state['index'] if generation is None else generation}.faiss"
        )

    def _read_ids(self, start: int, end: int) -> np.ndarray:
        if end <= start:
            return np.zeros(0, dtype=np.int64)
        with open(self._data_path("ids"), "rb") as handle:
            handle.seek(start * 8)
            return np.frombuffer(handle.read((end - start) * 8), dtype=np.int64).copy()

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of the given rows (sorted or not), read from disk."""
        dim = self.state["dimension"]
        out = np.empty((len(rows), dim), dtype=np.float32)
        if not len(rows):
            return out
        mapped = np.memmap(
            self._data_path("f32"), dtype=np.float32, mode="r", shape=(self.state["rows"], dim)
        )
        order = np.argsort(rows)
        out[order] = mapped[np.asarray(rows)[order]]
        del mapped
        return out

    # ---- identity -----------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        return {k: self.state[k] for k in ("embedder", "fingerprint", "dimension")}

    def bind(self, embedder: str, fingerprint: str | None, dimension: int) -> None:
        if self.state["rows"] and dimension != self.state["dimension"]:
            self.check(dimension=dimension)
        with self.docs.transaction() as docs:
            docs.set_state(embedder=embedder, fingerprint=fingerprint, dimension=dimension)
        self.state.update(embedder=embedder, fingerprint=fingerprint, dimension=dimension)
        if not self.state["rows"]:
            import faiss

            self.delta = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))

    # ---- writing ------------------------------------------------------------------------------

    def refresh(self) -> bool:
        version = self.docs.state().get("version", 0)
        if version == self.state["version"]:
            return False
        self._load()
        return True

    def _append(self, vectors: np.ndarray, ids: np.ndarray) -> tuple[int, str]:
        """Write rows past the committed end (dropping any leftover tail); returns the first
        row and the block's sha256. Not visible until the caller commits."""
        start = self.state["rows"]
        data = np.ascontiguousarray(vectors, dtype=np.float32).tobytes()
        for suffix, width, payload in (
            ("f32", vectors.shape[1] * 4, data),
            ("ids", 8, ids.astype(np.int64).tobytes()),
        ):
            path = self._data_path(suffix)
            with open(path, "ab+") as handle:
                handle.truncate(start * width)
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
        return start, hashlib.sha256(data).hexdigest()

    def write(
        self,
        chunks: list[StoredChunk],
        vectors: np.ndarray,
        documents: Iterable[DocumentRecord] = (),
        replace_sources: Iterable[str] = (),
    ) -> None:
        chunks, vectors = unique_chunks(chunks, np.asarray(vectors, dtype=np.float32))
        if chunks:
            self.check(dimension=vectors.shape[1])
        ids = np.array([c.id for c in chunks], dtype=np.int64)
        try:
            start, digest = self._append(vectors, ids) if chunks else (self.state["rows"], "")
        except OSError as exc:
            from promptkit.errors import ArtifactError

            raise ArtifactError(
                f"Could not write to the knowledge base at {self.root}: {exc}. Nothing was "
                "committed: it is as it was before this write. Free space or fix permissions "
                "and write again."
            ) from exc
        end = start + len(chunks)
        with self.docs.transaction() as docs:
            dropped = docs.delete_sources(replace_sources)
            replaced = docs.rows_of(ids.tolist())
            docs.put_chunks(chunks, range(start, end))
            docs.put_documents(documents)
            if chunks:
                docs.add_segment(self.state["data"], start, end, digest)
            version = self.state["version"] + 1
            docs.set_state(rows=end, version=version)
        self.state.update(rows=end, version=version)
        self._forget(dropped + list(replaced))
        if len(chunks):
            self.delta.add_with_ids(vectors, ids)
        self._live_count += len(chunks)
        self._bm25 = None
        self._maintain()

    def _forget(self, ids: list[int]) -> None:
        """Mask chunks that left (deleted, or replaced by a newer row) out of both indexes."""
        if not ids:
            return
        self.delta.remove_ids(np.asarray(ids, dtype=np.int64))
        if self.main is not None:  # harmless for ids the main index never held
            self.dead.update(ids)
        self._live_count -= len(ids)

    def delete(
        self,
        ids: Iterable[int] = (),
        where: dict[str, Any] | None = None,
        sources: Iterable[str] = (),
    ) -> int:
        wanted = [int(i) for i in ids] + (self.docs.ids_matching(where) if where else [])
        with self.docs.transaction() as docs:
            removed = docs.delete_sources(sources) + docs.delete_ids(wanted)
            version = self.state["version"] + 1
            docs.set_state(version=version)
        self.state["version"] = version
        self._forget(removed)
        self._bm25 = None
        return len(removed)

    def clear(self) -> None:
        with self.docs.transaction() as docs:
            docs.conn.execute("DELETE FROM chunks")
            docs.conn.execute("DELETE FROM documents")
            docs.drop_segments(-1)
            docs.set_state(
                rows=0, main_rows=0, trained_rows=0, kind=None, version=self.state["version"] + 1
            )
        self._load()

    # ---- reads --------------------------------------------------------------------------------

    def search(
        self, vectors: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[list[tuple[int, float]]]:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != (self.state["dimension"] or vectors.shape[1]):
            raise KnowledgeBaseError(
                f"Query vectors have {vectors.shape[-1]} dimensions, the knowledge base "
                f"{self.state['dimension']}: the embedder does not match it."
            )
        if self._live_count == 0:
            return [[] for _ in vectors]
        allowed = self.docs.ids_matching(where) if where else None
        if allowed is not None and len(allowed) < EXACT_FILTER_BELOW:
            return self._search_exact(vectors, k, allowed)
        k = min(k, self._live_count)
        parts = []
        if self.delta.ntotal:
            parts.append(search_index(self.delta, vectors, min(k, self.delta.ntotal), allowed))
        if self.main is not None:
            if self.dead:
                keep = [i for i in allowed if i not in self.dead] if allowed is not None else None
                parts.append(self._search_main(vectors, k, keep))
            else:
                parts.append(search_index(self.main, vectors, k, allowed))
        scores = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        out = []
        for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True):
            ranked = sorted(
                ((s, i) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0), reverse=True
            )
            out.append([(i, s) for s, i in ranked[:k]])
        short = [q for q, hits in enumerate(out) if len(hits) < k]
        if short and allowed is None:  # an approximate index came back short: answer exactly
            exact = self._search_exact(vectors[short], k, None)
            for q, hits in zip(short, exact, strict=True):
                out[q] = hits
        return out

    def _search_main(self, vectors: np.ndarray, k: int, keep: list[int] | None) -> Any:
        import faiss

        if keep is not None:
            return search_index(self.main, vectors, k, keep)
        from promptkit.knowledge.index import search_params

        dead = faiss.IDSelectorBatch(np.fromiter(self.dead, dtype=np.int64))
        selector = faiss.IDSelectorNot(dead)
        params = search_params(self.main, selector)
        params.referenced = (selector, dead, getattr(params, "referenced", None))
        return self.main.search(vectors, k, params=params)

    def _search_exact(
        self, vectors: np.ndarray, k: int, allowed: list[int] | None
    ) -> list[list[tuple[int, float]]]:
        """Exact search over the live rows (or those of ``allowed``), read from disk in blocks."""
        if allowed is None:
            rows = self.docs.live_rows()
        else:
            rows = np.array(sorted(self.docs.rows_of(allowed).values()), dtype=np.int64)
        k = min(k, len(rows))
        best_scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        best_rows = np.full((len(vectors), k), -1, dtype=np.int64)
        for start in range(0, len(rows), BLOCK):
            part = rows[start : start + BLOCK]
            scores = np.concatenate([best_scores, vectors @ self._read_rows(part).T], axis=1)
            candidates = np.concatenate(
                [best_rows, np.broadcast_to(part, (len(vectors), len(part)))], axis=1
            )
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k else scores[:, :0]
            best_scores = np.take_along_axis(scores, top, 1)
            best_rows = np.take_along_axis(candidates, top, 1)
        ids = self._read_ids(0, self.state["rows"])
        out = []
        for row_rows, row_scores in zip(best_rows, best_scores, strict=True):
            order = np.argsort(-row_scores)
            out.append(
                [(int(ids[row_rows[o]]), float(row_scores[o])) for o in order if row_rows[o] >= 0]
            )
        return out

    def search_text(
        self, query: str, k: int, where: dict[str, Any] | None = None
    ) -> list[tuple[int, float]]:
        from promptkit.knowledge.ranking import BM25Ranker

        if self._bm25 is None:  # built on first hybrid query; dropped on every write
            self._bm25 = BM25Ranker(*self.docs.texts())
        allowed = self.docs.ids_matching(where) if where else None
        return self._bm25.top(query, k, allowed)

    def rows(self, ids: Iterable[int]) -> dict[int, Row]:
        return self.docs.rows(ids)

    def ids_matching(self, where: dict[str, Any]) -> list[int]:
        return self.docs.ids_matching(where)

    def vectors(self, ids: list[int]) -> np.ndarray:
        rows = self.docs.rows_of(ids)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KnowledgeBaseError(f"No chunks with ids {missing[:5]} in this knowledge base.")
        return self._read_rows(np.array([rows[i] for i in ids], dtype=np.int64))

    def cached_embeddings(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        found = self.docs.rows_by_hash(hashes)
        if not found:
            return {}
        keys = list(found)
        vectors = self._read_rows(np.array([found[h] for h in keys], dtype=np.int64))
        return dict(zip(keys, vectors, strict=True))

    def iter_chunks(self, batch: int = 4096) -> Iterator[list[StoredChunk]]:
        return self.docs.iter_chunks(batch)

    def all_texts(self) -> tuple[list[int], list[str]]:
        return self.docs.texts()

    def count(self) -> int:
        return self._live_count

    def documents(self) -> list[DocumentRecord]:
        return self.docs.documents()

    def document_count(self) -> int:
        return self.docs.document_count()

    def stats(self) -> dict[str, Any]:
        files = [p for p in self.root.iterdir() if p.is_file()]
        return {
            "store": self.name,
            "chunks": self._live_count,
            "index": self.state["kind"],
            "recall_at_10": self.state["recall_at_10"],
            "main_rows": self.state["main_rows"],
            "delta_rows": int(self.delta.ntotal),
            "masked": len(self.dead),
            "bytes": sum(p.stat().st_size for p in files),
        }

    def copy_to(self, target: Path) -> None:
        """A consistent copy of the committed store in the (new, empty) directory ``target``."""
        import shutil

        target.mkdir(parents=True, exist_ok=True)
        self.docs.backup(target / "docstore.sqlite")
        width = {"f32": 4 * (self.state["dimension"] or 0), "ids": 8}
        for suffix, size in width.items():
            source = self._data_path(suffix)
            if source.exists():
                with open(source, "rb") as src, open(target / source.name, "wb") as dst:
                    remaining = self.state["rows"] * size
                    while remaining > 0:
                        block = src.read(min(remaining, 1 << 24))
                        dst.write(block)
                        remaining -= len(block)
        if self.state["main_rows"]:
            shutil.copyfile(self._index_path(), target / self._index_path().name)

    def close(self) -> None:
        self.docs.close()

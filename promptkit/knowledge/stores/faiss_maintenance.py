"""The FAISS store's main index: trained, folded and compacted here, never on a plain write.

:meth:`Maintenance.optimize` trains a new main index on every live row and compacts the vector
files; ``_maintain`` (after every write) retrains once the collection has doubled since the last
training and folds a large delta into the main index without training. Each rebuild writes new
files and commits them in one SQLite transaction, so a crash leaves the previous index in force.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from promptkit.knowledge.index import (
    choose_index_type,
    measure_recall,
    needs_training,
    new_index,
    train_index,
)

BLOCK = 65_536  # rows read at a time when streaming the vector file
FOLD_MIN_ROWS = 50_000
TRAIN_SAMPLE_PER_LIST = 64


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


class Maintenance:
    """Training and compaction of :class:`~promptkit.knowledge.stores.faiss_store.FaissStore`."""

    root: Path
    docs: Any
    state: dict[str, Any]
    index_type: str
    index_params: dict[str, Any]
    trainings: int
    main: Any
    delta: Any
    dead: set[int]
    _live_count: int

    if TYPE_CHECKING:

        def _load(self, verify: bool = False) -> None: ...
        def _data_path(self, suffix: str, generation: int | None = None) -> Path: ...
        def _index_path(self, generation: int | None = None) -> Path: ...
        def _read_ids(self, start: int, end: int) -> np.ndarray: ...
        def _read_rows(self, rows: np.ndarray) -> np.ndarray: ...
        def _search_exact(
            self, vectors: np.ndarray, k: int, allowed: list[int] | None
        ) -> list[list[tuple[int, float]]]: ...

    def _maintain(self) -> None:
        """Retrain once the collection has doubled since the last training; fold a large delta."""
        count, kind, wanted = self._live_count, self.state["kind"], self._wanted_kind()
        if kind is None or count >= 2 * max(self.state["trained_rows"], 1):
            if wanted != "flat" or kind not in (None, "flat"):
                self.optimize()
            else:  # a flat index has nothing to train
                update = {"kind": "flat", "trained_rows": count, "recall_at_10": 1.0}
                with self.docs.transaction() as docs:
                    docs.set_state(**update)
                self.state.update(update)
        elif self.main is not None and self.delta.ntotal > max(FOLD_MIN_ROWS, count // 10):
            self._rebuild(train=bool(self.dead) and not _removable(self.main))

    def _wanted_kind(self) -> str:
        return self.index_type if self.index_type != "auto" else choose_index_type(self._live_count)

    def optimize(self) -> None:
        """Retrain the main index on the current vectors and compact away deleted rows."""
        self._rebuild(train=True)

    @contextlib.contextmanager
    def _pointing(self, data: int, rows: int) -> Iterator[None]:
        """Read from generation ``data`` with ``rows`` rows for the duration."""
        saved = self.state["data"], self.state["rows"]
        self.state["data"], self.state["rows"] = data, rows
        try:
            yield
        finally:
            self.state["data"], self.state["rows"] = saved

    def _rebuild(self, train: bool) -> None:
        """Train a new main index on every live row (``train``), or fold the delta rows into the
        current one; either way the main index file is written anew and committed."""
        import faiss

        from promptkit.artifacts import sha256_file

        kind = self._wanted_kind() if train else self.state["kind"]
        live = self.docs.live_rows()
        data_gen, rows, remap = self.state["data"], self.state["rows"], None
        if train and len(live) < rows:  # compact away the rows nothing points at any more
            data_gen, rows = data_gen + 1, len(live)
            remap = self._compact(live, data_gen)
            live = np.arange(rows, dtype=np.int64)
        index_gen, index, recall = self.state["index"] + 1, None, 1.0
        if kind != "flat" and len(live):
            with self._pointing(data_gen, rows):
                if train or self.main is None:
                    index, first = (
                        new_index(kind, self.state["dimension"], rows, self.index_params),
                        0,
                    )
                    if needs_training(index):
                        picked = np.random.default_rng(0).choice(
                            live, size=min(len(live), self._sample_size(index)), replace=False
                        )
                        train_index(index, kind, self._read_rows(np.sort(picked)))
                        self.trainings += 1
                else:
                    index, first = self.main, self.state["main_rows"]
                    if self.dead:
                        index.remove_ids(np.fromiter(self.dead, dtype=np.int64))
                ids = self._read_ids(0, rows)
                fresh = live[live >= first]
                for start in range(0, len(fresh), BLOCK):
                    part = fresh[start : start + BLOCK]
                    index.add_with_ids(self._read_rows(part), ids[part])
                recall = self._measure(index, live)
            faiss.write_index(index, str(self._index_path(index_gen)))
            _fsync(self._index_path(index_gen))
        update = {
            "data": data_gen,
            "index": index_gen,
            "rows": rows,
            "kind": kind,
            "main_rows": rows if index is not None else 0,
            "recall_at_10": recall,
            "version": self.state["version"] + 1,
            "index_sha256": sha256_file(self._index_path(index_gen)) if index else None,
        }
        if train:
            update["trained_rows"] = len(live)
        with self.docs.transaction() as docs:
            if remap is not None:
                docs.conn.executemany("UPDATE chunks SET row = ? WHERE id = ?", remap)
                docs.drop_segments(data_gen)
            docs.set_state(**update)
        self.state.update(update)
        self.cleanup()
        self._load()

    def _sample_size(self, index: Any) -> int:
        lists = getattr(_ivf(index), "nlist", 1)
        return max(needs_training(index), lists * TRAIN_SAMPLE_PER_LIST, 10_000)

    def _compact(self, live: np.ndarray, generation: int) -> list[tuple[int, int]]:
        """Copy the live rows to generation ``generation``'s files, with their segment hashes;
        returns the (new row, id) pairs that the committing transaction writes."""
        ids = self._read_ids(0, self.state["rows"])
        pairs: list[tuple[int, int]] = []
        segments = []
        with (
            open(self._data_path("f32", generation), "wb") as vec,
            open(self._data_path("ids", generation), "wb") as idf,
        ):
            for start in range(0, len(live), BLOCK):
                part = live[start : start + BLOCK]
                payload = self._read_rows(part).tobytes()
                vec.write(payload)
                idf.write(ids[part].tobytes())
                segments.append((start, start + len(part), hashlib.sha256(payload).hexdigest()))
                pairs += [(start + i, c) for i, c in enumerate(ids[part].tolist())]
            for handle in (vec, idf):
                handle.flush()
                os.fsync(handle.fileno())
        with self.docs.transaction() as docs:  # inert until the state names this generation
            for start, end, digest in segments:
                docs.add_segment(generation, start, end, digest)
        return pairs

    def _measure(self, index: Any, live: np.ndarray, queries: int = 100) -> float:
        """recall@10 against exact search, with queries that are not indexed vectors (the
        normalized midpoints of random pairs of stored ones)."""
        pairs = np.random.default_rng(1).choice(live, size=(min(queries, len(live)), 2))
        q = self._read_rows(pairs[:, 0]) + self._read_rows(pairs[:, 1])
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        exact = self._search_exact(q, 10, None)
        truth = np.array([[i for i, _ in hits] + [-1] * (10 - len(hits)) for hits in exact])
        return measure_recall(index, q, truth, 10)

    def cleanup(self) -> None:
        """Remove files of generations the committed state no longer names."""
        keep = {self._data_path("f32").name, self._data_path("ids").name, self._index_path().name}
        for path in self.root.iterdir():
            if path.name.startswith(("data.", "index.")) and path.name not in keep:
                path.unlink(missing_ok=True)


def _removable(index: Any) -> bool:
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return not isinstance(inner, (faiss.IndexHNSW, faiss.IndexRefine))


def _ivf(index: Any) -> Any:
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return faiss.downcast_index(inner.base_index) if hasattr(inner, "base_index") else inner

"""The FAISS store's docstore: documents, chunks and metadata in an SQLite file on disk.

Vectors are not here: each chunk names its row in the store's vector file, and that row is
the table's key, so an append writes the table's last pages, not pages all over it. SQLite is
the commit point of the FAISS store: a write is committed when its transaction is, and
everything on disk past the committed row count is a leftover of an interrupted write.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from promptkit.errors import KnowledgeBaseError
from promptkit.knowledge.stores.base import DocumentRecord, Row, StoredChunk, check_filter

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    source TEXT PRIMARY KEY, content_hash TEXT NOT NULL, metadata TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    row INTEGER PRIMARY KEY, id INTEGER NOT NULL UNIQUE, source TEXT NOT NULL,
    text TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, text_hash TEXT NOT NULL,
    metadata TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(text_hash);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    generation INTEGER NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
    sha256 TEXT NOT NULL, PRIMARY KEY (generation, start));
"""
ROW_CACHE_LIMIT = 100_000
BATCH = 500  # SQLite's bound-parameter limit is far above this; larger IN lists gain nothing


def _batches(values: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), BATCH):
        yield values[start : start + BATCH]


class DocStore:
    """Documents and chunks in ``path`` (SQLite, write-ahead log)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise KnowledgeBaseError(
                f"{path} is not a valid docstore ({exc}). Rebuild the knowledge base."
            ) from exc
        self._rows: dict[int, Row] = {}

    def close(self) -> None:
        self.conn.close()

    def transaction(self) -> Any:
        """``with docs.transaction():`` — one atomic commit (rolled back on error)."""
        return _Transaction(self)

    # ---- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM state")}

    def set_state(self, **values: Any) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO state VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def add_segment(self, generation: int, start: int, end: int, sha256: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?)", (generation, start, end, sha256)
        )

    def segments(self, generation: int) -> list[tuple[int, int, str]]:
        return list(
            self.conn.execute(
                "SELECT start, end, sha256 FROM segments WHERE generation = ? ORDER BY start",
                (generation,),
            )
        )

    def drop_segments(self, keep_generation: int) -> None:
        self.conn.execute("DELETE FROM segments WHERE generation != ?", (keep_generation,))

    # ---- documents ----------------------------------------------------------------------------

    def documents(self) -> list[DocumentRecord]:
        return [
            DocumentRecord(s, h, json.loads(m))
            for s, h, m in self.conn.execute("SELECT source, content_hash, metadata FROM documents")
        ]

    def put_documents(self, documents: Iterable[DocumentRecord]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO documents VALUES (?, ?, ?)",
            [(d.source, d.content_hash, json.dumps(d.metadata, default=str)) for d in documents],
        )

    def document_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM documents").fetchone()[0])

    def delete_sources(self, sources: Iterable[str]) -> list[int]:
        """Drop documents ``sources`` and their chunks; returns the ids of the chunks dropped."""
        self._rows.clear()
        removed: list[int] = []
        for part in _batches(list(sources)):
            marks = ",".join("?" * len(part))
            removed += [
                r[0]
                for r in self.conn.execute(f"SELECT id FROM chunks WHERE source IN ({marks})", part)
            ]
            self.conn.execute(f"DELETE FROM chunks WHERE source IN ({marks})", part)
            self.conn.execute(f"DELETE FROM documents WHERE source IN ({marks})", part)
        return removed

    # ---- chunks -------------------------------------------------------------------------------

    def put_chunks(self, chunks: list[StoredChunk], rows: Iterable[int]) -> None:
        self._rows.clear()
        self.conn.executemany(
            "INSERT OR REPLACE INTO chunks (id, source, text, start, end, text_hash, metadata, "
            "row) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    c.id,
                    c.source,
                    c.text,
                    c.start,
                    c.end,
                    c.text_hash,
                    json.dumps(c.metadata, default=str),
                    int(row),
                )
                for c, row in zip(chunks, rows, strict=True)
            ],
        )

    def delete_ids(self, ids: Iterable[int]) -> list[int]:
        self._rows.clear()
        removed: list[int] = []
        for part in _batches([int(i) for i in ids]):
            marks = ",".join("?" * len(part))
            removed += [
                r[0]
                for r in self.conn.execute(f"SELECT id FROM chunks WHERE id IN ({marks})", part)
            ]
            self.conn.execute(f"DELETE FROM chunks WHERE id IN ({marks})", part)
        return removed

    def rows_of(self, ids: Iterable[int]) -> dict[int, int]:
        """Vector-file row of each chunk id that exists."""
        out: dict[int, int] = {}
        for part in _batches([int(i) for i in ids]):
            marks = ",".join("?" * len(part))
            out.update(self.conn.execute(f"SELECT id, row FROM chunks WHERE id IN ({marks})", part))
        return out

    def rows_by_hash(self, hashes: Iterable[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in _batches(list(set(hashes))):
            marks = ",".join("?" * len(part))
            out.update(
                self.conn.execute(
                    f"SELECT text_hash, row FROM chunks WHERE text_hash IN ({marks})", part
                )
            )
        return out

    def live_rows(self) -> np.ndarray:
        """The vector-file row of every chunk, ascending (no Python list of a million rows)."""
        cursor = self.conn.execute("SELECT row FROM chunks")
        return np.sort(np.fromiter((r for (r,) in cursor), dtype=np.int64, count=self.count()))

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def iter_chunks(self, batch: int) -> Iterator[list[StoredChunk]]:
        cursor = self.conn.execute(
            "SELECT id, source, text, start, end, text_hash, metadata FROM chunks ORDER BY id"
        )
        while part := cursor.fetchmany(batch):
            yield [StoredChunk(i, s, t, a, b, h, json.loads(m)) for i, s, t, a, b, h, m in part]

    def texts(self) -> tuple[list[int], list[str]]:
        rows = self.conn.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def rows(self, ids: Iterable[int]) -> dict[int, Row]:
        """Raw chunk rows by id, through a bounded cache (cleared on every write)."""
        out: dict[int, Row] = {}
        missing = []
        cache = self._rows
        for chunk_id in ids:  # numpy and Python integers hash alike
            row = cache.get(chunk_id)
            if row is None:
                missing.append(int(chunk_id))
            else:
                out[row[0]] = row
        for part in _batches(missing):
            marks = ",".join("?" * len(part))
            for row in self.conn.execute(
                f"SELECT id, source, text, start, end, metadata FROM chunks WHERE id IN ({marks})",
                part,
            ):
                out[row[0]] = row
                if len(cache) < ROW_CACHE_LIMIT:
                    cache[row[0]] = row
        return out

    def ids_matching(self, where: dict[str, Any]) -> list[int]:
        """Chunk ids whose metadata match every condition (SQL, before any vector search)."""
        clauses, args = [], []
        for key, op, value in check_filter(where):
            column = "source" if key == "source" else f"json_extract(metadata, '$.{key}')"
            if op == "in":
                clauses.append(f"{column} IN ({','.join('?' * len(value))})" if value else "0")
                args += value
            else:
                clauses.append(f"{column} {op} ?")
                args.append(value)
        sql = "SELECT id FROM chunks" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
        return [r[0] for r in self.conn.execute(sql, args)]

    def backup(self, target: Path) -> None:
        """A consistent copy of the committed database at ``target``."""
        copy = sqlite3.connect(target)
        self.conn.backup(copy)
        copy.close()


class _Transaction:
    def __init__(self, docs: DocStore) -> None:
        self.docs = docs

    def __enter__(self) -> DocStore:
        self.docs.conn.execute("BEGIN IMMEDIATE")
        return self.docs

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self.docs._rows.clear()
        self.docs.conn.execute("COMMIT" if kind is None else "ROLLBACK")

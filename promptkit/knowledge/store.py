"""The docstore: documents, chunks, metadata and embeddings in SQLite.

Embeddings are stored with their chunk, keyed by the chunk text's hash, so re-indexing reuses
every vector whose text did not change and the FAISS index can always be rebuilt from here.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from promptkit.errors import KnowledgeBaseError

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    source TEXT PRIMARY KEY, content_hash TEXT NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, text TEXT NOT NULL, start INTEGER NOT NULL,
    end INTEGER NOT NULL, text_hash TEXT NOT NULL, metadata TEXT NOT NULL,
    embedding BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(text_hash);
"""
ROW_CACHE_LIMIT = 100_000
Row = tuple[int, str, str, int, int, str]
OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "ne": "!="}


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class DocStore:
    """An in-memory SQLite database, loaded from and saved to a file by backup."""

    def __init__(self, path: Path | None = None) -> None:
        self.conn = sqlite3.connect(":memory:")
        self._rows: dict[int, Row] = {}
        if path is not None:
            try:
                source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                source.backup(self.conn)
                source.close()
                self.conn.execute("SELECT count(*) FROM chunks").fetchone()
            except sqlite3.DatabaseError as exc:
                raise KnowledgeBaseError(
                    f"{path} is not a valid docstore ({exc}). Rebuild the knowledge base."
                ) from exc
        self.conn.executescript(SCHEMA)

    def save(self, path: Path) -> None:
        self.conn.commit()  # a backup waits forever on an open write transaction
        target = sqlite3.connect(path)
        self.conn.backup(target)
        target.close()

    # ---- documents ----------------------------------------------------------------------------

    def document_hashes(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT source, content_hash FROM documents"))

    def put_document(self, source: str, content_hash: str, metadata: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO documents VALUES (?, ?, ?)",
            (source, content_hash, json.dumps(metadata, default=str)),
        )

    def delete_sources(self, sources: Iterable[str]) -> int:
        self._rows.clear()
        removed = 0
        for source in sources:
            removed += self.conn.execute("DELETE FROM chunks WHERE source = ?", (source,)).rowcount
            self.conn.execute("DELETE FROM documents WHERE source = ?", (source,))
        return removed

    # ---- chunks -------------------------------------------------------------------------------

    def cached_embeddings(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(set(hashes))
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            marks = ",".join("?" * len(part))
            for digest, blob in self.conn.execute(
                f"SELECT text_hash, embedding FROM chunks WHERE text_hash IN ({marks})", part
            ):
                found[digest] = np.frombuffer(blob, dtype=np.float32)
        return found

    def next_id(self) -> int:
        value = self.conn.execute("SELECT max(id) FROM chunks").fetchone()[0]
        return (value or 0) + 1

    def add_chunks(
        self, rows: list[tuple[int, str, str, int, int, str, dict[str, Any], np.ndarray]]
    ) -> None:
        self._rows.clear()
        self.conn.executemany(
            "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (i, s, t, a, b, h, json.dumps(m, default=str), v.astype(np.float32).tobytes())
                for i, s, t, a, b, h, m, v in rows
            ],
        )

    def replace_embeddings(self, ids: list[int], vectors: np.ndarray) -> None:
        """Overwrite the vectors of chunks ``ids`` (re-embedding with another model)."""
        self.conn.executemany(
            "UPDATE chunks SET embedding = ? WHERE id = ?",
            [(v.astype(np.float32).tobytes(), int(i)) for i, v in zip(ids, vectors, strict=True)],
        )

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def text_bytes(self) -> int:
        """Bytes of chunk text and metadata (a size estimate that reads no vectors)."""
        row = self.conn.execute(
            "SELECT SUM(LENGTH(text) + LENGTH(metadata)) FROM chunks"
        ).fetchone()
        return int(row[0] or 0)

    def document_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM documents").fetchone()[0])

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.conn.execute("SELECT id, embedding FROM chunks ORDER BY id").fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.vstack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        return ids, vectors

    def all_texts(self) -> tuple[list[int], list[str]]:
        rows = self.conn.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def rows(self, ids: Iterable[int]) -> dict[int, Row]:
        """Raw chunk rows ``(id, source, text, start, end, metadata_json)`` by id.

        Rows are kept in a bounded in-process cache (cleared on every write), so hot chunks cost
        a dictionary lookup instead of a SQL round trip; metadata is parsed only when read.
        """
        out: dict[int, Row] = {}
        missing = []
        cache = self._rows
        for chunk_id in ids:  # numpy and Python integers hash alike
            row = cache.get(chunk_id)
            if row is None:
                missing.append(int(chunk_id))
            else:
                out[row[0]] = row
        if not missing:
            return out
        for start in range(0, len(missing), 500):
            part = missing[start : start + 500]
            marks = ",".join("?" * len(part))
            for row in self.conn.execute(
                f"SELECT id, source, text, start, end, metadata FROM chunks WHERE id IN ({marks})",
                part,
            ):
                out[row[0]] = row
                if len(self._rows) < ROW_CACHE_LIMIT:
                    self._rows[row[0]] = row
        return out

    def fetch(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Chunks by id as dicts with parsed metadata."""
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

    def ids_matching(self, where: dict[str, Any]) -> list[int]:
        """Chunk ids whose metadata match every condition (SQL, before any vector search).

        ``{"key": value}`` equality, ``{"key": [a, b]}`` membership,
        ``{"key": {"gte": 1, "lt": 5}}`` ranges; ``source`` filters on the document path.
        """
        clauses, args = [], []
        for key, condition in where.items():
            if not isinstance(key, str) or not key.replace("_", "").replace("-", "").isalnum():
                raise KnowledgeBaseError(f"Filter key {key!r} must be a plain field name.")
            column = "source" if key == "source" else f"json_extract(metadata, '$.{key}')"
            if isinstance(condition, dict):
                for op, value in condition.items():
                    if op not in OPERATORS:
                        raise KnowledgeBaseError(
                            f"Filter operator {op!r} on {key!r} is not one of {sorted(OPERATORS)}."
                        )
                    clauses.append(f"{column} {OPERATORS[op]} ?")
                    args.append(value)
            elif isinstance(condition, (list, tuple, set)):
                values = list(condition)
                clauses.append(f"{column} IN ({','.join('?' * len(values))})" if values else "0")
                args += values
            else:
                clauses.append(f"{column} = ?")
                args.append(condition)
        sql = "SELECT id FROM chunks" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
        return [r[0] for r in self.conn.execute(sql, args)]

    def delete_ids(self, ids: Iterable[int]) -> int:
        self._rows.clear()
        wanted = [int(i) for i in ids]
        removed = 0
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            removed += self.conn.execute(
                f"DELETE FROM chunks WHERE id IN ({','.join('?' * len(part))})", part
            ).rowcount
        return removed

"""The ``milvus`` store: a knowledge base in a Milvus collection.

Embedded by default (milvus-lite: one local file, no server); the same code runs against a Milvus
Standalone or Distributed cluster given ``uri="http://host:19530"``. Milvus does the work itself:
filters become Milvus boolean expressions (every value escaped, so no filter value can change the
expression), BM25 is Milvus' full-text function over the ``text`` field, and equal-weight hybrid
search is Milvus' own ``hybrid_search`` with reciprocal rank fusion.

Two collections: ``<name>`` holds chunks (id, vector, text, BM25 sparse vector, source, span,
text hash, metadata as JSON); ``<name>_documents`` holds documents (source → content hash) and a
row with what the store records about its vectors (embedder, fingerprint, dimension).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from promptkit.errors import KnowledgeBaseError
from promptkit.knowledge.stores.base import (
    DocumentRecord,
    Row,
    StoredChunk,
    VectorStore,
    check_filter,
    unique_chunks,
)

INFO_SOURCE = "__promptkit_store__"  # the documents row that holds the store's own record
_LOCAL_USERS: dict[str, int] = {}  # milvus-lite data directory → open stores in this process
MAX_TEXT = 65_535
MAX_SOURCE = 4_096
QUERY_BATCH = 1_000  # Milvus caps query windows; ids and filters are read in pages
# milvus-lite answers iterators without a server timestamp; pymilvus warns on every page
logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
FIELDS = ["id", "source", "text", "start", "end", "text_hash", "metadata"]


def _literal(value: Any) -> str:
    """A Milvus expression literal for ``value``; strings are JSON-quoted, which escapes every
    quote and backslash, so a value is always one literal and never more expression."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise KnowledgeBaseError(f"Filter value {value!r} is not a finite number.")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise KnowledgeBaseError(
        f"Filter value {value!r} must be a string, number or boolean to filter on Milvus."
    )


def milvus_filter(where: dict[str, Any] | None) -> str:
    """promptkit's filter dict as a Milvus boolean expression ("" for no filter)."""
    if not where:
        return ""
    clauses = []
    for key, op, value in check_filter(where):
        field = "source" if key == "source" else f'metadata["{key}"]'
        if op == "in":  # a JSON path cannot stand left of Milvus' "in": spell it out
            alternatives = [f"{field} == {_literal(v)}" for v in value]
            clauses.append(" or ".join(alternatives) if alternatives else "false")
        else:
            clauses.append(f"{field} {'==' if op == '=' else op} {_literal(value)}")
    return " and ".join(f"({c})" for c in clauses)


def _id_list(ids: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(i)) for i in ids) + "]"


class MilvusStore(VectorStore):
    name = "milvus"

    def __init__(self, uri: str, collection: str = "promptkit", token: str | None = None) -> None:
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:  # pragma: no cover - the extra is part of the test setup
            raise KnowledgeBaseError(
                "The milvus store needs pymilvus: pip install 'promptkit[milvus]'."
            ) from exc
        import os

        self.uri, self.collection = uri, collection
        self.local = uri.endswith(".db")  # milvus-lite, in this process
        if self.local:
            self.uri = uri = os.path.abspath(uri)
            _LOCAL_USERS[uri] = _LOCAL_USERS.get(uri, 0) + 1
        self.documents_collection = f"{collection}_documents"
        try:
            self.client = MilvusClient(uri, token=token or "")
        except Exception as exc:
            raise KnowledgeBaseError(f"Could not open Milvus at {uri}: {exc}") from exc
        self._info: dict[str, Any] = {"embedder": None, "fingerprint": None, "dimension": None}
        for name in (self.collection, self.documents_collection):
            if self.client.has_collection(name):  # reopened: collections start released
                self.client.load_collection(name)
        if self.client.has_collection(self.documents_collection):
            found = self.client.get(self.documents_collection, ids=[INFO_SOURCE])
            if found:
                self._info.update(found[0]["metadata"])
        else:
            self._create_documents()

    # ---- schema -------------------------------------------------------------------------------

    def _create_documents(self) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("source", DataType.VARCHAR, is_primary=True, max_length=MAX_SOURCE)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=128)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one vector field
        params = self.client.prepare_index_params()
        params.add_index("unused", index_type="FLAT", metric_type="L2")
        self.client.create_collection(
            self.documents_collection,
            schema=schema,
            index_params=params,
            consistency_level="Strong",
        )

    def _create_chunks(self, dimension: int) -> None:
        from pymilvus import DataType, Function, FunctionType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT, enable_analyzer=True)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("source", DataType.VARCHAR, max_length=MAX_SOURCE)
        schema.add_field("start", DataType.INT64)
        schema.add_field("end", DataType.INT64)
        schema.add_field("text_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("metadata", DataType.JSON)
        schema.add_function(
            Function(
                name="bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["sparse"],
            )
        )
        params = self.client.prepare_index_params()
        params.add_index("vector", index_type="AUTOINDEX", metric_type="IP")
        params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        self.client.create_collection(
            self.collection, schema=schema, index_params=params, consistency_level="Strong"
        )

    @property
    def _ready(self) -> bool:
        """Whether the chunks collection exists (asked of the server until it does)."""
        if not getattr(self, "_exists", False):
            self._exists = self._info.get("dimension") is not None and self.client.has_collection(
                self.collection
            )
        return self._exists

    # ---- identity -----------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def bind(self, embedder: str, fingerprint: str | None, dimension: int) -> None:
        if self._info.get("dimension") not in (None, dimension) and self.count():
            self.check(dimension=dimension)
        if not self.client.has_collection(self.collection):
            self._create_chunks(dimension)
        self._info = {"embedder": embedder, "fingerprint": fingerprint, "dimension": dimension}
        self.client.upsert(
            self.documents_collection,
            [
                {
                    "source": INFO_SOURCE,
                    "content_hash": "",
                    "metadata": self._info,
                    "unused": [0.0, 0.0],
                }
            ],
        )

    # ---- writes -------------------------------------------------------------------------------

    def write(
        self,
        chunks: list[StoredChunk],
        vectors: np.ndarray,
        documents: Iterable[DocumentRecord] = (),
        replace_sources: Iterable[str] = (),
    ) -> None:
        replace = list(replace_sources)
        documents = list(documents)
        chunks, vectors = unique_chunks(chunks, vectors)
        if chunks:
            self.check(dimension=int(np.asarray(vectors).shape[1]))
        if replace:
            self.delete(sources=replace)
        for start in range(0, len(chunks), QUERY_BATCH):
            part = chunks[start : start + QUERY_BATCH]
            block = np.asarray(vectors[start : start + QUERY_BATCH], dtype=np.float32)
            rows = []
            for chunk, vector in zip(part, block, strict=True):
                if len(chunk.text.encode("utf-8")) > MAX_TEXT:
                    raise KnowledgeBaseError(
                        f"A chunk of {chunk.source} is longer than Milvus' {MAX_TEXT}-byte text "
                        "field; use smaller chunks (chunking={'max_tokens': ...})."
                    )
                rows.append(
                    {
                        "id": int(chunk.id),
                        "vector": vector.tolist(),
                        "text": chunk.text,
                        "source": chunk.source,
                        "start": int(chunk.start),
                        "end": int(chunk.end),
                        "text_hash": chunk.text_hash,
                        "metadata": chunk.metadata,
                    }
                )
            self.client.upsert(self.collection, rows)
        # documents last: a crash before this line leaves them unrecorded, so the next update
        # indexes them again (upserts by id) instead of trusting a half-written state
        for start in range(0, len(documents), QUERY_BATCH):
            self.client.upsert(
                self.documents_collection,
                [
                    {
                        "source": d.source,
                        "content_hash": d.content_hash,
                        "metadata": json.loads(json.dumps(d.metadata, default=str)),
                        "unused": [0.0, 0.0],
                    }
                    for d in documents[start : start + QUERY_BATCH]
                ],
            )

    def delete(
        self,
        ids: Iterable[int] = (),
        where: dict[str, Any] | None = None,
        sources: Iterable[str] = (),
    ) -> int:
        wanted = {int(i) for i in ids}
        if where:
            wanted.update(self.ids_matching(where))
        sources = list(sources)
        if sources:
            wanted.update(self.ids_matching({"source": sources}))
            self.client.delete(
                self.documents_collection,
                filter=f"source in [{', '.join(_literal(s) for s in sources)}]",
            )
        if not wanted or not self._ready:
            return 0
        present = set(self._query(f"id in {_id_list(wanted)}", ["id"]))
        if present:
            listed = sorted(present)
            for start in range(0, len(listed), QUERY_BATCH):
                self.client.delete(self.collection, ids=listed[start : start + QUERY_BATCH])
        return len(present)

    def clear(self) -> None:
        self._exists = False
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)
        self.client.delete(self.documents_collection, filter=f"source != {_literal(INFO_SOURCE)}")
        if self._info.get("dimension"):
            self._create_chunks(self._info["dimension"])

    # ---- reads --------------------------------------------------------------------------------

    def _query(self, expression: str, fields: list[str]) -> dict[int, dict[str, Any]]:
        """Every chunk matching ``expression`` (paged), by id."""
        out: dict[int, dict[str, Any]] = {}
        if not self._ready:
            return out
        iterator = self.client.query_iterator(
            self.collection,
            batch_size=QUERY_BATCH,
            filter=expression,
            output_fields=[f for f in fields if f != "id"] or ["id"],
        )
        while page := iterator.next():
            out.update({row["id"]: row for row in page})
        iterator.close()
        return out

    def search(
        self, vectors: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[list[tuple[int, float]]]:
        vectors = np.asarray(vectors, dtype=np.float32)
        self.check(dimension=vectors.shape[1])
        if not self._ready:
            return [[] for _ in vectors]
        found = self.client.search(
            self.collection,
            data=vectors.tolist(),
            anns_field="vector",
            limit=k,
            filter=milvus_filter(where),
            search_params={"metric_type": "IP"},
            output_fields=[],
        )
        return [[(hit["id"], float(hit["distance"])) for hit in hits] for hits in found]

    def search_text(
        self, query: str, k: int, where: dict[str, Any] | None = None
    ) -> list[tuple[int, float]]:
        if not self._ready or not query.strip():
            return []
        found = self.client.search(
            self.collection,
            data=[query],
            anns_field="sparse",
            limit=k,
            filter=milvus_filter(where),
            search_params={"metric_type": "BM25"},
            output_fields=[],
        )
        # the order is Milvus' BM25 ranking; milvus-lite reports the score negated
        return [(hit["id"], abs(float(hit["distance"]))) for hit in found[0]]

    def hybrid(
        self,
        query: str,
        vector: np.ndarray,
        k: int,
        where: dict[str, Any] | None,
        weights: tuple[float, float],
        rrf_k: float,
    ) -> list[tuple[int, float]]:
        if weights[0] != weights[1] or not self._ready:  # weighted RRF is promptkit's own
            return super().hybrid(query, vector, k, where, weights, rrf_k)
        from pymilvus import AnnSearchRequest, RRFRanker

        expression = milvus_filter(where)
        requests = [
            AnnSearchRequest(
                [np.asarray(vector, np.float32).tolist()],
                "vector",
                {"metric_type": "IP"},
                k,
                expr=expression,
            ),
            AnnSearchRequest([query], "sparse", {"metric_type": "BM25"}, k, expr=expression),
        ]
        found = self.client.hybrid_search(
            self.collection, requests, RRFRanker(int(rrf_k)), limit=k, output_fields=[]
        )
        return [(hit["id"], float(hit["distance"]) * weights[0]) for hit in found[0]]

    def rows(self, ids: Iterable[int]) -> dict[int, Row]:
        wanted = [int(i) for i in ids]
        out: dict[int, Row] = {}
        if not wanted or not self._ready:
            return out
        for start in range(0, len(wanted), QUERY_BATCH):
            part = wanted[start : start + QUERY_BATCH]
            for row in self.client.get(self.collection, ids=part, output_fields=FIELDS[1:]):
                out[row["id"]] = (
                    row["id"],
                    row["source"],
                    row["text"],
                    row["start"],
                    row["end"],
                    json.dumps(row["metadata"]),
                )
        return out

    def ids_matching(self, where: dict[str, Any]) -> list[int]:
        return sorted(self._query(milvus_filter(where), ["id"]))

    def vectors(self, ids: list[int]) -> np.ndarray:
        found: dict[int, Any] = {}
        for start in range(0, len(ids), QUERY_BATCH):
            part = [int(i) for i in ids[start : start + QUERY_BATCH]]
            for row in self.client.get(self.collection, ids=part, output_fields=["vector"]):
                found[row["id"]] = row["vector"]
        missing = [i for i in ids if i not in found]
        if missing:
            raise KnowledgeBaseError(f"No chunks with ids {missing[:5]} in this knowledge base.")
        return np.asarray([found[i] for i in ids], dtype=np.float32).reshape(len(ids), -1)

    def cached_embeddings(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        wanted = sorted(set(hashes))
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(wanted), QUERY_BATCH):
            part = wanted[start : start + QUERY_BATCH]
            expression = f"text_hash in [{', '.join(_literal(h) for h in part)}]"
            for row in self._query(expression, ["text_hash", "vector"]).values():
                out[row["text_hash"]] = np.asarray(row["vector"], dtype=np.float32)
        return out

    def iter_chunks(self, batch: int = 4096) -> Iterator[list[StoredChunk]]:
        if not self._ready:
            return
        iterator = self.client.query_iterator(
            self.collection,
            batch_size=min(batch, QUERY_BATCH),
            filter="",
            output_fields=FIELDS[1:],
        )
        while page := iterator.next():
            yield [
                StoredChunk(
                    r["id"],
                    r["source"],
                    r["text"],
                    r["start"],
                    r["end"],
                    r["text_hash"],
                    r["metadata"],
                )
                for r in page
            ]
        iterator.close()

    def count(self) -> int:
        if not self._ready:
            return 0
        found = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(found[0]["count(*)"])

    def documents(self) -> list[DocumentRecord]:
        out = []
        iterator = self.client.query_iterator(
            self.documents_collection,
            batch_size=QUERY_BATCH,
            filter=f"source != {_literal(INFO_SOURCE)}",
            output_fields=["content_hash", "metadata"],
        )
        while page := iterator.next():
            out += [DocumentRecord(r["source"], r["content_hash"], r["metadata"]) for r in page]
        iterator.close()
        return out

    def optimize(self) -> None:
        """Seal what was written and let Milvus merge segments and drop deleted rows."""
        if self._ready:
            self.client.flush(self.collection)
            self.client.compact(self.collection)

    def stats(self) -> dict[str, Any]:
        import os

        size = None
        if self.local:  # milvus-lite keeps everything in this directory
            size = sum(
                os.path.getsize(os.path.join(d, f))
                for d, _, files in os.walk(self.uri)
                for f in files
            )
        return {
            "store": self.name,
            "chunks": self.count(),
            "index": "milvus AUTOINDEX",
            "uri": self.uri,
            "collection": self.collection,
            "bytes": size,
        }

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.client.close()
        if self.local:  # the last user stops milvus-lite, releasing its lock on the directory
            _LOCAL_USERS[self.uri] -= 1
            if not _LOCAL_USERS[self.uri]:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.uri)

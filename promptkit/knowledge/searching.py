"""Searching a knowledge base: dense, hybrid and reranked search, distinct results, and the
(query, passage) pairs that train a retriever or a reranker from labelled questions.

``KnowledgeBase`` takes these methods from :class:`Searching`; they need only its ``store``,
``embedder`` and ``_reranker``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from promptkit.errors import KnowledgeBaseError
from promptkit.knowledge.ranking import HOW_TO_TRAIN, CrossEncoderReranker, Fusion, Hit


class Searching:
    """The search half of :class:`~promptkit.knowledge.KnowledgeBase`."""

    store: Any
    embedder: Any
    _reranker: CrossEncoderReranker | None

    def __len__(self) -> int:
        return int(self.store.count())

    def search(
        self,
        query: str,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        hybrid: Any = False,
        rerank: Any = False,
        candidates: int | None = None,
        distinct: str | None = None,
        rerank_weight: float = 1.0,
    ) -> list[Hit]:
        """The ``k`` chunks most similar to ``query``.

        ``filter`` is applied before the vector search (FAISS ID selectors), so a selective
        filter still returns its matches. ``hybrid`` fuses BM25 with dense results by reciprocal
        rank fusion (True, or a :class:`Fusion` / dict of dense_weight, sparse_weight, rrf_k);
        ``rerank`` (a fitted rerank adapter, its directory, or a cross-encoder checkpoint with a
        trained head) reorders the candidates; ``rerank_weight`` below 1 blends its standardized
        scores with the first stage's (choose it on validation with
        :func:`promptkit.knowledge.tune_rerank_weight`).
        ``candidates`` is how many chunks fusion and reranking start from (default ``4 * k``);
        reranking costs one cross-encoder pass per candidate. ``distinct="source"`` (or a
        metadata field) returns ``k`` hits with different values of it — the best chunk of each
        of ``k`` documents rather than ``k`` chunks of one page.
        """
        return self.search_many(
            [query], k, filter, hybrid, rerank, candidates, distinct, rerank_weight
        )[0]

    def search_many(
        self,
        queries: list[str],
        k: int = 10,
        filter: dict[str, Any] | None = None,
        hybrid: Any = False,
        rerank: Any = False,
        candidates: int | None = None,
        distinct: str | None = None,
        rerank_weight: float = 1.0,
    ) -> list[list[Hit]]:
        """:meth:`search` for several queries at once (one embedding batch)."""
        if not 0 <= rerank_weight <= 1:
            raise KnowledgeBaseError(f"rerank_weight must be in [0, 1], got {rerank_weight}.")
        rerank = (rerank, rerank_weight) if rerank is not False and rerank is not None else False
        if not all(isinstance(q, str) for q in queries):
            raise KnowledgeBaseError("Queries must be strings.")
        if distinct is None:
            return self._search(list(queries), None, k, filter, hybrid, rerank, candidates)
        vectors = self.embedder.encode(list(queries), progress=False) if len(self) else None
        depth = max(k * 4, candidates or 0)
        while True:  # deepen until every query has k distinct values, or the base runs out
            found = self._search(list(queries), vectors, depth, filter, hybrid, rerank, depth)
            kept = [_distinct(hits, distinct)[:k] for hits in found]
            if all(len(h) == k for h in kept) or depth >= len(self):
                return kept
            depth *= 4

    def search_by_vector(
        self, vectors: np.ndarray, k: int = 10, filter: dict[str, Any] | None = None
    ) -> list[list[Hit]]:
        """Dense search with query vectors you embedded yourself (one row per query)."""
        queries = [""] * len(vectors)
        return self._search(queries, np.asarray(vectors, dtype=np.float32), k, filter)

    def _search(
        self,
        queries: list[str],
        vectors: np.ndarray | None,  # embedded from ``queries`` when None
        k: int,
        filter: dict[str, Any] | None,
        hybrid: Any = False,
        rerank: Any = False,
        candidates: int | None = None,
    ) -> list[list[Hit]]:
        if k < 1:
            raise KnowledgeBaseError(f"k must be at least 1, got {k}.")
        if candidates is not None and candidates < k:
            raise KnowledgeBaseError(f"candidates must be at least k ({k}), got {candidates}.")
        store = self.store
        fusion = Fusion.of(hybrid) if hybrid is not False and hybrid is not None else None
        depth = (candidates or k * 4) if (fusion or rerank) else k
        if vectors is None:
            vectors = self.embedder.encode(queries, progress=False)
        if fusion is None:
            ranked_all = store.search(vectors, depth, filter)
        else:
            weights = (fusion.dense_weight, fusion.sparse_weight)
            ranked_all = [
                store.hybrid(query, vector, depth, filter, weights, fusion.rrf_k)
                for query, vector in zip(queries, vectors, strict=True)
            ]
        results = []
        for query, ranked in zip(queries, ranked_all, strict=True):
            rows = store.rows(i for i, _ in ranked)
            hits = [
                Hit(row[2], score, row[1], (row[3], row[4]), None, i, row[5])
                for i, score in ranked
                if (row := rows.get(i)) is not None
            ]
            if rerank:
                hits = self._rerank(query, hits, rerank)
            results.append(hits[:k])
        return results

    def _rerank(self, query: str, hits: list[Hit], setting: tuple[Any, float]) -> list[Hit]:
        model, weight = setting
        if model is True:
            raise KnowledgeBaseError(
                "rerank=True: promptkit ships no trained reranker, and an untrained ranking head "
                "ranks at random. " + HOW_TO_TRAIN
            )
        reranker = self._reranker
        current = reranker.source if reranker is not None else None
        if reranker is None or (
            current is not model and not (isinstance(model, str) and current == model)
        ):
            reranker = self._reranker = CrossEncoderReranker(model)
        return reranker.rerank(query, hits, weight)

    def training_pairs(
        self,
        records: Iterable[dict[str, Any]],
        query_field: str = "question",
        gold_field: str = "passage_id",
        gold_key: str = "heading",
    ) -> list[dict[str, str]]:
        """(query, passage) records for a retrieval or rerank task from labelled questions.

        Each record names its answer's section in ``gold_field``; the passage is that section's
        first chunk (chunks whose metadata ``gold_key`` equals the value), exactly as this
        knowledge base stores it. Records whose section is not here are skipped with a warning.
        """
        import warnings

        records = list(records)
        out, missing = [], 0
        for record in records:
            ids = self.store.ids_matching({gold_key: record.get(gold_field)})
            if not ids:
                missing += 1
                continue
            chunks = self.store.fetch(ids).values()
            first = min(chunks, key=lambda c: (c["source"], c["span"][0]))
            out.append({"query": str(record[query_field]), "passage": first["text"]})
        if missing:
            warnings.warn(
                f"{missing} of {len(records)} records name a {gold_key!r} this knowledge base "
                "does not hold; they were skipped.",
                stacklevel=2,
            )
        return out


def _distinct(hits: list[Hit], key: str) -> list[Hit]:
    """The first (best) hit for each value of ``key`` (``"source"`` or a metadata field)."""
    seen: set[Any] = set()
    out = []
    for hit in hits:
        value = hit.source if key == "source" else json.dumps(hit.metadata.get(key), default=str)
        if value not in seen:
            seen.add(value)
            out.append(hit)
    return out

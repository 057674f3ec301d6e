"""Choosing hybrid fusion and reranking settings on labelled validation queries (never on the
test split)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from promptkit.knowledge.ranking import CrossEncoderReranker, Fusion, blend, fuse

SPARSE_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
RRF_KS = (5.0, 20.0, 60.0)
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def tune_fusion(
    kb: Any,
    queries: Sequence[str],
    relevant: Sequence[Any],
    key: str = "heading",
    k: int = 10,
    sparse_weights: Sequence[float] = SPARSE_WEIGHTS,
    rrf_ks: Sequence[float] = RRF_KS,
    depth: int = 50,
) -> tuple[Fusion, list[dict[str, Any]]]:
    """The fusion settings with the best recall@``k`` (ties: MRR) on ``queries``.

    ``relevant[i]`` is the value (or set of values) of metadata ``key`` (or ``"source"``) that
    answers ``queries[i]``. The dense weight stays 1 and BM25's weight and ``rrf_k`` vary; a
    BM25 weight of 0 is dense search alone, so the choice is never worse than dense on these
    queries. Dense and BM25 rankings are computed once and fused for every setting. Returns the
    winner and one row per setting (``sparse_weight``, ``rrf_k``, ``recall@k``, ``mrr``).
    """
    wanted = [{*r} if isinstance(r, (set, list, tuple)) else {r} for r in relevant]
    vectors = kb.embedder.encode(list(queries), progress=False)
    dense = kb.store.search(vectors, depth)
    sparse = [kb.store.search_text(q, depth) for q in queries]
    ids = {i for ranking in dense + sparse for i, _ in ranking}
    rows = kb.store.rows(ids)
    value = {
        i: row[1] if key == "source" else json.loads(row[5]).get(key) for i, row in rows.items()
    }
    table = []
    for weight in sparse_weights:
        for rrf_k in rrf_ks if weight else rrf_ks[:1]:  # rrf_k changes nothing for dense alone
            fusion = Fusion(1.0, float(weight), float(rrf_k))
            hits, reciprocal = [], []
            for d, s, gold in zip(dense, sparse, wanted, strict=True):
                ranked = fuse([d, s], [1.0, fusion.sparse_weight], fusion.rrf_k) if weight else d
                first = _first_relevant([value.get(chunk_id) for chunk_id, _ in ranked], gold)
                hits.append(first is not None and first < k)
                reciprocal.append(0.0 if first is None else 1.0 / (first + 1))
            table.append(
                {
                    **fusion.to_dict(),
                    f"recall@{k}": float(np.mean(hits)),
                    "mrr": float(np.mean(reciprocal)),
                }
            )
    best = max(table, key=lambda row: (row[f"recall@{k}"], row["mrr"]))
    return Fusion(best["dense_weight"], best["sparse_weight"], best["rrf_k"]), table


def _labels(hit: Any, key: str) -> Any:
    return hit.source if key == "source" else hit.metadata.get(key)


def _first_relevant(values: list[Any], gold: set[Any]) -> int | None:
    seen: list[Any] = []
    for value in values:  # distinct values, in rank order
        if value not in seen:
            seen.append(value)
    return next((n for n, v in enumerate(seen) if v in gold), None)


def tune_rerank_weight(
    kb: Any,
    reranker: Any,
    queries: Sequence[str],
    relevant: Sequence[Any],
    key: str = "heading",
    k: int = 10,
    candidates: int = 20,
    weights: Sequence[float] = WEIGHTS,
    **search: Any,
) -> tuple[float, list[dict[str, Any]]]:
    """The reranker weight (see ``KnowledgeBase.search(rerank_weight=...)``) with the best
    recall@1 (ties: MRR, then the larger weight) on ``queries``.

    Weight 0 keeps the first stage's order, so the choice is never worse than no reranking on
    these queries. The reranker scores each query's ``candidates`` once; every weight is then a
    blend of the same scores. ``search`` passes other search options (``hybrid``, ``filter``).
    """
    model = CrossEncoderReranker(reranker)
    wanted = [{*r} if isinstance(r, (set, list, tuple)) else {r} for r in relevant]
    found = kb.search_many(list(queries), k=candidates, candidates=candidates, **search)
    scored = [(hits, model.scores(q, hits)) for q, hits in zip(queries, found, strict=True)]
    table = []
    for weight in weights:
        firsts = []
        for (hits, rerank), gold in zip(scored, wanted, strict=True):
            order = np.argsort(-blend(rerank, np.array([h.score for h in hits]), weight))
            firsts.append(_first_relevant([_labels(hits[i], key) for i in order], gold))
        table.append(
            {
                "rerank_weight": float(weight),
                "recall@1": float(np.mean([f == 0 for f in firsts])),
                f"recall@{k}": float(np.mean([f is not None and f < k for f in firsts])),
                "mrr": float(np.mean([0.0 if f is None else 1 / (f + 1) for f in firsts])),
            }
        )
    best = max(table, key=lambda row: (row["recall@1"], row["mrr"], row["rerank_weight"]))
    return best["rerank_weight"], table


__all__ = ["tune_fusion", "tune_rerank_weight"]

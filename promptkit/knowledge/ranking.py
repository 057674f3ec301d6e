"""Ranking pieces around the vector search: the hit type, BM25, rank fusion, reranking."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

RRF_K = 60
DEFAULT_RERANKER = "cross-encoder/ms-marco-MiniLM-L6-v2"


class Hit:
    """A retrieved chunk: its text, score, source document, character span and metadata.

    ``metadata`` is parsed from the docstore's JSON the first time it is read.
    """

    __slots__ = ("_metadata", "_metadata_json", "id", "score", "source", "span", "text")

    def __init__(
        self,
        text: str,
        score: float,
        source: str,
        span: tuple[int, int],
        metadata: dict[str, Any] | None = None,
        id: int = 0,
        metadata_json: str | None = None,
    ) -> None:
        self.text, self.score, self.source, self.span, self.id = text, score, source, span, id
        self._metadata = metadata
        self._metadata_json = metadata_json

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = json.loads(self._metadata_json or "{}")
        return self._metadata

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "score": self.score,
            "source": self.source,
            "span": list(self.span),
            "metadata": self.metadata,
        }

    def __repr__(self) -> str:
        return (
            f"Hit(score={self.score:.4f}, source={self.source!r}, span={self.span}, "
            f"text={self.text[:60]!r})"
        )


class BM25Ranker:
    """BM25 (bm25s) over a fixed list of chunks; scores are masked before ranking by a filter."""

    def __init__(self, ids: list[int], texts: list[str]) -> None:
        import bm25s

        self.ids = np.asarray(ids)
        self.retriever = bm25s.BM25()
        self.retriever.index(
            bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False
        )

    def top(self, query: str, k: int, allowed: list[int] | None) -> list[tuple[int, float]]:
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        if not tokens:
            return []
        scores = np.asarray(self.retriever.get_scores(tokens), dtype=np.float32)
        if allowed is not None:
            scores = np.where(np.isin(self.ids, np.asarray(allowed)), scores, -np.inf)
        top = np.argsort(-scores)[:k]
        return [(int(self.ids[i]), float(scores[i])) for i in top if scores[i] > 0]


class CrossEncoderReranker:
    """Reorders hits by a cross-encoder's (query, passage) score."""

    def __init__(self, name: str) -> None:
        from sentence_transformers import CrossEncoder

        from promptkit import models

        self.name = name
        self.model = CrossEncoder(models.resolve(name), num_labels=1)

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        if not hits:
            return hits
        scores = self.model.predict([(query, h.text) for h in hits], show_progress_bar=False)
        for hit, score in zip(hits, scores, strict=True):
            hit.score = float(score)
        return sorted(hits, key=lambda h: -h.score)


def fuse(rankings: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion (Cormack et al., 2009) with k = 60."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (chunk_id, _) in enumerate(ranking):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
    return sorted(scores.items(), key=lambda item: -item[1])


__all__ = ["DEFAULT_RERANKER", "BM25Ranker", "CrossEncoderReranker", "Hit", "fuse"]

"""Ranking pieces around the vector search: the hit type, BM25, rank fusion, reranking."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

RRF_K = 60


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
    """Reorders hits by a trained cross-encoder's (query, passage) score.

    ``model`` is a fitted promptkit adapter for a rerank task, its saved directory, or a
    cross-encoder checkpoint (directory or Hugging Face id) that has a trained ranking head. A
    plain encoder such as MiniLM would get a randomly initialized head, and rank at random: that
    is refused, with the way to train one.
    """

    def __init__(self, model: Any) -> None:
        self.source = model
        self.name = model if isinstance(model, str) else f"<{type(model).__name__}>"
        self.model = _cross_encoder(model)

    def scores(self, query: str, hits: list[Hit]) -> np.ndarray:
        """The cross-encoder's relevance score of each hit for ``query``."""
        if not hits:
            return np.zeros(0)
        pairs = [(query, h.text) for h in hits]
        return np.asarray(self.model.predict(pairs, show_progress_bar=False)).reshape(-1)

    def rerank(self, query: str, hits: list[Hit], weight: float = 1.0) -> list[Hit]:
        """Hits reordered by ``weight`` × the cross-encoder's score + (1 − ``weight``) × the
        first-stage score, both standardized over the candidates (``weight`` 1: the
        cross-encoder alone)."""
        if not hits:
            return hits
        scores = blend(self.scores(query, hits), np.array([h.score for h in hits]), weight)
        for hit, score in zip(hits, scores, strict=True):
            hit.score = float(score)
        return sorted(hits, key=lambda h: -h.score)


def blend(rerank: np.ndarray, first: np.ndarray, weight: float) -> np.ndarray:
    """Interpolate standardized reranker and first-stage scores (weight on the reranker)."""
    if weight >= 1:
        return rerank
    return weight * _standardized(rerank) + (1 - weight) * _standardized(first)


def _standardized(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / (values.std() + 1e-9)


HOW_TO_TRAIN = (
    "Train one on your (query, passage) pairs: pk.create_adapter('full', model='minilm', "
    "task=pk.Task.rerank(), negatives_from=kb).fit(kb.training_pairs(questions)), then pass "
    "rerank=<that adapter or its saved directory>. See docs/knowledge.md."
)


def _cross_encoder(model: Any) -> Any:
    """A loaded sentence-transformers CrossEncoder with a trained ranking head, or an error."""
    from pathlib import Path

    from promptkit import models
    from promptkit.errors import KnowledgeBaseError

    pairs = getattr(model, "pairs_", None)
    if pairs is not None:  # a fitted promptkit adapter
        if not pairs.cross:
            raise KnowledgeBaseError(
                "rerank= needs an adapter trained on a rerank task (a cross-encoder); this one "
                "is a retrieval model: use it as embedder= instead."
            )
        return pairs.model
    if not isinstance(model, (str, Path)) or isinstance(model, bool):
        raise KnowledgeBaseError(
            f"rerank= takes a fitted rerank adapter or a cross-encoder directory, not {model!r}. "
            + HOW_TO_TRAIN
        )
    path = Path(models.resolve(str(model)))
    if (path / "manifest.json").is_file() and (path / "model").is_dir():
        path = path / "model"  # a saved promptkit adapter: its model folder
    config = path / "config.json"
    if config.is_file():
        architectures = json.loads(config.read_text()).get("architectures") or []
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise KnowledgeBaseError(
                f"{model!r} has no trained ranking head ({architectures or 'no architecture'}): "
                "as a cross-encoder it would rank at random. " + HOW_TO_TRAIN
            )
    from sentence_transformers.cross_encoder import CrossEncoder

    return CrossEncoder(str(path) if path.exists() else str(model), num_labels=1)


@dataclass(frozen=True)
class Fusion:
    """How hybrid search fuses dense and BM25 rankings: weighted reciprocal rank fusion
    (Cormack et al., 2009). A chunk scores ``weight / (rrf_k + rank)`` in each ranking; a larger
    ``rrf_k`` flattens the advantage of the very top ranks."""

    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    rrf_k: float = RRF_K

    @classmethod
    def of(cls, value: Any) -> Fusion:
        """``True`` (equal weights, rrf_k 60), a dict of the fields, or a Fusion."""
        from promptkit.errors import KnowledgeBaseError

        if isinstance(value, Fusion):
            return value
        if value is True:
            return cls()
        if isinstance(value, dict):
            unknown = set(value) - {"dense_weight", "sparse_weight", "rrf_k"}
            if unknown:
                raise KnowledgeBaseError(
                    f"Unknown fusion setting(s) {sorted(unknown)}; use dense_weight, "
                    "sparse_weight, rrf_k."
                )
            fusion = cls(**{k: float(v) for k, v in value.items()})
            if min(fusion.dense_weight, fusion.sparse_weight) < 0 or fusion.rrf_k < 0:
                raise KnowledgeBaseError(f"Fusion weights and rrf_k must be >= 0, got {value}.")
            return fusion
        raise KnowledgeBaseError(f"hybrid= takes True or fusion settings, not {value!r}.")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fuse(
    rankings: list[list[tuple[int, float]]],
    weights: list[float] | None = None,
    rrf_k: float = RRF_K,
) -> list[tuple[int, float]]:
    """Weighted reciprocal rank fusion of ranked ``(chunk_id, score)`` lists."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, (chunk_id, _) in enumerate(ranking):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (rrf_k + rank + 1)
    return sorted(scores.items(), key=lambda item: -item[1])


__all__ = ["BM25Ranker", "CrossEncoderReranker", "Fusion", "Hit", "fuse"]

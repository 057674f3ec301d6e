"""Metric specs by name: how to compute a metric, which direction is better, how to resample it.

Each spec computes from aligned references and predictions (and per-label scores where needed).
For fast, vectorized bootstrap intervals a spec also describes itself as either

* ``per_example``: one number per example whose mean is the metric (accuracy, exact match...), or
* ``stats`` + ``from_stats``: per-example sufficient statistics whose column sums determine the
  metric (confusion counts for F1, n-gram counts for BLEU, calibration bins for ECE).

Early stopping and the evaluator read ``higher_is_better`` from here: a direction is written once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from promptkit.registry import Registry

MetricKind = Literal["classification", "generation", "retrieval", "rag"]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric. See the module docstring for ``per_example`` and ``stats``."""

    name: str
    kind: MetricKind
    higher_is_better: bool
    per_example: Callable[[Any], np.ndarray] | None = None
    stats: Callable[[Any], np.ndarray] | None = None
    from_stats: Callable[[np.ndarray, Any], np.ndarray] | None = None
    weighted: Callable[[Any, np.ndarray | None], np.ndarray] | None = None
    needs_scores: bool = False
    description: str = ""

    def values(self, batch: Any) -> np.ndarray:
        """Per-example values or statistics, shape (n,) or (n, d)."""
        fn = self.per_example or self.stats
        assert fn is not None, f"metric {self.name} defines neither per_example nor stats"
        return np.asarray(fn(batch), dtype=np.float64)

    def reduce(self, sums: np.ndarray, count: np.ndarray | float, batch: Any) -> np.ndarray:
        """Metric from column sums (rows are resamples) and example counts."""
        if self.per_example is not None:
            return sums / count
        assert self.from_stats is not None
        return self.from_stats(sums, batch)

    def compute(self, batch: Any) -> float:
        if self.weighted is not None:
            return float(self.weighted(batch, None)[0])
        values = self.values(batch)
        if len(values) == 0:
            return float("nan")
        return float(
            np.atleast_1d(self.reduce(values.sum(0)[None], np.array([len(values)]), batch))[0]
        )


metrics: Registry[MetricSpec] = Registry("metric")


def register_metric(spec: MetricSpec, overwrite: bool = False) -> MetricSpec:
    """Register a custom metric with one call: ``register_metric(MetricSpec(...))``."""
    metrics.register(spec.name, spec, overwrite=overwrite)
    return spec


def get_metric(name: str) -> MetricSpec:
    return metrics.get(name)


# ---- the batch a metric sees ------------------------------------------------------------------


@dataclass
class ClassificationBatch:
    """Integer-coded labels: ``refs``/``preds`` index ``labels``; ``scores`` is (n, K) or None."""

    refs: np.ndarray
    preds: np.ndarray
    labels: list[str]
    scores: np.ndarray | None = None

    @classmethod
    def from_names(
        cls,
        refs: Sequence[str],
        preds: Sequence[str],
        labels: Sequence[str],
        scores: np.ndarray | None = None,
    ) -> ClassificationBatch:
        index = {label: i for i, label in enumerate(labels)}
        return cls(
            np.array([index[r] for r in refs], dtype=np.int64),
            np.array([index[p] for p in preds], dtype=np.int64),
            list(labels),
            scores,
        )


@dataclass
class GenerationBatch:
    refs: list[str]
    preds: list[str]
    contexts: list[list[str]] | None = None
    gold: list[list[bool]] | None = None  # per example, per injected passage: is it a gold one

    @property
    def answers(self) -> list[str]:
        """The predictions without their citation markers ([n] of a passage that was injected):
        what answer-quality metrics read, since citations are scored on their own."""
        if self.contexts is None:
            return list(self.preds)
        from promptkit.metrics_generation import strip_citations as strip

        return [strip(p, len(c)) for p, c in zip(self.preds, self.contexts, strict=True)]


@dataclass
class RetrievalBatch:
    """Per query: the ranked ids retrieved and the set of relevant ids."""

    retrieved: list[list[Any]]
    relevant: list[set[Any]]
    k: int = 10


# ---- classification ---------------------------------------------------------------------------


def _confusion_stats(batch: ClassificationBatch) -> np.ndarray:
    k = len(batch.labels)
    onehot = np.zeros((len(batch.refs), k * k), dtype=np.float64)
    onehot[np.arange(len(batch.refs)), batch.refs * k + batch.preds] = 1.0
    return onehot


def _prf(
    sums: np.ndarray, batch: ClassificationBatch, which: str = "f1", average: str = "macro"
) -> np.ndarray:
    """Precision/recall/F1 from flattened confusion counts (rows = resamples), as scikit-learn."""
    k = len(batch.labels)
    cm = sums.reshape(-1, k, k)  # [resample, true, pred]
    tp = np.diagonal(cm, axis1=1, axis2=2)
    predicted, actual = cm.sum(1), cm.sum(2)
    if average == "micro":
        tp, predicted, actual = (
            tp.sum(1, keepdims=True),
            predicted.sum(1, keepdims=True),
            actual.sum(1, keepdims=True),
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    value = {"precision": precision, "recall": recall, "f1": f1}[which]
    if average == "weighted":
        weights = actual / np.maximum(actual.sum(1, keepdims=True), 1)
        return np.asarray((value * weights).sum(1))
    if average == "macro":
        present = (actual + predicted) > 0  # scikit-learn averages over labels seen in y or pred
        return np.asarray((value * present).sum(1) / np.maximum(present.sum(1), 1))
    return np.asarray(value[:, 0])


def _accuracy(batch: ClassificationBatch) -> np.ndarray:
    return (batch.refs == batch.preds).astype(np.float64)


def _log_loss(batch: ClassificationBatch) -> np.ndarray:
    assert batch.scores is not None
    probs = np.clip(batch.scores / batch.scores.sum(1, keepdims=True), 1e-15, 1.0)
    return -np.log(probs[np.arange(len(batch.refs)), batch.refs])


ECE_BINS = 15


def _ece_stats(batch: ClassificationBatch) -> np.ndarray:
    assert batch.scores is not None
    probs = batch.scores / batch.scores.sum(1, keepdims=True)  # scores need not sum to 1
    confidence = np.clip(probs.max(1), 0.0, 1.0)
    correct = (probs.argmax(1) == batch.refs).astype(np.float64)
    bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
    stats = np.zeros((len(batch.refs), ECE_BINS * 3))
    rows = np.arange(len(batch.refs))
    stats[rows, bins * 3] = 1.0
    stats[rows, bins * 3 + 1] = confidence
    stats[rows, bins * 3 + 2] = correct
    return stats


def _ece_from_stats(sums: np.ndarray, batch: Any) -> np.ndarray:
    s = sums.reshape(sums.shape[0], ECE_BINS, 3)
    counts = s[:, :, 0]
    total = np.maximum(counts.sum(1), 1)
    gap = np.abs(s[:, :, 1] - s[:, :, 2])  # |sum conf - sum correct| per bin = n_b |conf - acc|
    return np.asarray(gap.sum(1) / total)


def roc_auc(refs: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """ROC-AUC (one-vs-rest macro for K > 2) with optional resampling weights (rows).

    Ties count one half, as in scikit-learn. ``weights`` has shape (B, n); the result (B,).
    """
    n, k = scores.shape
    w = np.ones((1, n)) if weights is None else weights
    classes = [1] if k == 2 else list(range(k))
    aucs = []
    for c in classes:
        score = scores[:, c]
        levels, inverse = np.unique(score, return_inverse=True)
        positive = (refs == c).astype(np.float64)
        pos = np.zeros((w.shape[0], len(levels)))
        neg = np.zeros((w.shape[0], len(levels)))
        np.add.at(pos.T, inverse, (w * positive).T)
        np.add.at(neg.T, inverse, (w * (1 - positive)).T)
        below = np.cumsum(neg, axis=1) - neg
        pairs = (pos * (below + 0.5 * neg)).sum(1)
        denom = pos.sum(1) * neg.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append(np.where(denom > 0, pairs / denom, np.nan))
    return np.asarray(np.nanmean(np.vstack(aucs), axis=0) if k > 2 else aucs[0])


def _register_classification() -> None:
    register_metric(
        MetricSpec(
            "accuracy",
            "classification",
            True,
            per_example=_accuracy,
            description="Share of exact label matches.",
        )
    )
    for which in ("precision", "recall", "f1"):
        for average in ("macro", "micro", "weighted"):
            register_metric(
                MetricSpec(
                    f"{which}_{average}",
                    "classification",
                    True,
                    stats=_confusion_stats,
                    from_stats=functools.partial(_prf, which=which, average=average),
                    description=f"{which.capitalize()}, {average}-averaged over labels.",
                )
            )
    register_metric(
        MetricSpec(
            "roc_auc",
            "classification",
            True,
            needs_scores=True,
            weighted=lambda b, w: roc_auc(b.refs, b.scores, w),
            description="Area under the ROC curve (one-vs-rest macro for more than two labels).",
        )
    )
    register_metric(
        MetricSpec(
            "log_loss",
            "classification",
            False,
            per_example=_log_loss,
            needs_scores=True,
            description="Cross-entropy of the scores.",
        )
    )
    register_metric(
        MetricSpec(
            "ece",
            "classification",
            False,
            stats=_ece_stats,
            from_stats=_ece_from_stats,
            needs_scores=True,
            description=f"Expected calibration error, {ECE_BINS} bins.",
        )
    )


# ---- retrieval --------------------------------------------------------------------------------


def _rank_of_first(batch: RetrievalBatch) -> list[int | None]:
    ranks: list[int | None] = []
    for retrieved, relevant in zip(batch.retrieved, batch.relevant, strict=True):
        ranks.append(next((i + 1 for i, r in enumerate(retrieved) if r in relevant), None))
    return ranks


def _recall_at_k(batch: RetrievalBatch) -> np.ndarray:
    return np.array(
        [
            len(set(r[: batch.k]) & rel) / max(len(rel), 1)
            for r, rel in zip(batch.retrieved, batch.relevant, strict=True)
        ]
    )


def _precision_at_k(batch: RetrievalBatch) -> np.ndarray:
    return np.array(
        [
            len(set(r[: batch.k]) & rel) / batch.k
            for r, rel in zip(batch.retrieved, batch.relevant, strict=True)
        ]
    )


def _hit_rate(batch: RetrievalBatch) -> np.ndarray:
    return np.array([float(rank is not None and rank <= batch.k) for rank in _rank_of_first(batch)])


def _mrr(batch: RetrievalBatch) -> np.ndarray:
    return np.array(
        [
            1.0 / rank if rank is not None and rank <= batch.k else 0.0
            for rank in _rank_of_first(batch)
        ]
    )


def _ndcg(batch: RetrievalBatch) -> np.ndarray:
    values = []
    for retrieved, relevant in zip(batch.retrieved, batch.relevant, strict=True):
        seen: set[Any] = set()
        dcg = 0.0
        for i, r in enumerate(retrieved[: batch.k]):
            if r in relevant and r not in seen:  # a relevant item counts once, at its best rank
                dcg += 1.0 / np.log2(i + 2)
                seen.add(r)
        ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(relevant), batch.k)))
        values.append(dcg / ideal if ideal else 0.0)
    return np.array(values)


def _register_retrieval() -> None:
    for name, fn, text in [
        ("recall_at_k", _recall_at_k, "Share of relevant items in the top k."),
        ("precision_at_k", _precision_at_k, "Share of the top k that is relevant."),
        ("hit_rate", _hit_rate, "Queries with at least one relevant item in the top k."),
        ("mrr", _mrr, "Mean reciprocal rank of the first relevant item (0 past k)."),
        ("ndcg_at_k", _ndcg, "Normalized discounted cumulative gain at k (binary relevance)."),
    ]:
        register_metric(MetricSpec(name, "retrieval", True, per_example=fn, description=text))


# generation and RAG metrics live beside: their module imports nothing from this one at import
from promptkit.metrics_generation import (  # noqa: E402
    CITATION as CITATION,
)
from promptkit.metrics_generation import (  # noqa: E402
    normalize_answer as normalize_answer,
)
from promptkit.metrics_generation import (  # noqa: E402
    register_generation,
)
from promptkit.metrics_generation import (  # noqa: E402
    strip_citations as strip_citations,
)
from promptkit.metrics_generation import (  # noqa: E402
    token_f1 as token_f1,
)

_register_classification()
register_generation(register_metric, MetricSpec)
_register_retrieval()

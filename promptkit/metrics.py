"""Metric specs by name: how to compute a metric and which direction is better.

A spec's ``compute`` takes aligned lists (references, predictions, and optionally per-example
score rows) and returns one float. Early stopping and the evaluator read ``higher_is_better`` from
here, so the direction of a metric is written down once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from promptkit.registry import Registry

MetricKind = Literal["classification", "generation", "retrieval", "rag"]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    ``per_example`` (optional) maps one example to a number whose mean is the metric; metrics that
    have it get fast, vectorized bootstrap intervals. ``needs_scores`` metrics read per-label
    probabilities. ``compute`` always gives the exact corpus-level value.
    """

    name: str
    kind: MetricKind
    higher_is_better: bool
    compute: Callable[..., float]
    needs_scores: bool = False
    description: str = ""
    per_example: Callable[..., Any] | None = None


metrics: Registry[MetricSpec] = Registry("metric")


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Register a custom metric: ``register_metric(MetricSpec("my_metric", ...))``."""
    metrics.register(spec.name, spec)
    return spec


def get_metric(name: str) -> MetricSpec:
    return metrics.get(name)


def _accuracy(refs: Sequence[Any], preds: Sequence[Any], **_: Any) -> float:
    if not refs:
        return float("nan")
    return sum(r == p for r, p in zip(refs, preds, strict=True)) / len(refs)


def _accuracy_rows(refs: Sequence[Any], preds: Sequence[Any], **_: Any) -> list[float]:
    return [float(r == p) for r, p in zip(refs, preds, strict=True)]


register_metric(MetricSpec("accuracy", "classification", True, _accuracy,
                           description="Share of exact label matches.",
                           per_example=_accuracy_rows))

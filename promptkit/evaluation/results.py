"""What an evaluation records besides its metrics: per-adapter results, paired comparisons,
costs (time, memory, size, API spend) and the provenance of the run (library versions, data hash).
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from promptkit.evaluation.stats import Interval

if TYPE_CHECKING:
    from promptkit.adapters.base import Adapter

LIBRARIES = [
    "promptkit",
    "torch",
    "transformers",
    "peft",
    "sentence-transformers",
    "faiss-cpu",
    "scikit-learn",
    "numpy",
]


@dataclass
class AdapterResult:
    """Everything measured for one adapter on one dataset."""

    name: str
    metrics: dict[str, Interval]
    costs: dict[str, Any] = field(default_factory=dict)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    seed_metrics: list[dict[str, float]] = field(default_factory=list)  # one entry per seed
    repeats: int = 1  # training seeds stacked in ``predictions`` (each a copy of the examples)
    batch: Any = None  # kept for paired tests; not serialized


@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    difference: float
    p_value: float
    test: str
    significant: bool
    # the difference's interval at the report's level: percentile bootstrap over the same
    # resampled examples for both (seeds of one example resampled together)
    low: float = float("nan")
    high: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def cells(self) -> list[str]:
        """The row shown in every table format."""
        return [
            self.a,
            self.b,
            self.metric,
            f"{self.difference:+.3f}"
            + ("" if math.isnan(self.low) else f" [{self.low:+.3f}, {self.high:+.3f}]"),
            f"{self.p_value:.3g}",
            self.test,
            "yes" if self.significant else "no",
        ]


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def data_hash(records: Sequence[Mapping[str, Any]]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def safe_config(adapter: Adapter) -> dict[str, Any]:
    try:
        config = adapter.config.to_dict()
    except Exception:  # a config with exotic values must not break a report
        return {}
    config.pop("task", None)
    return config


def api_spent(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float]:
    """What one evaluation spent on an API: the difference of the adapter's running totals."""
    if after is None:
        return {}
    spent = {k: v - (before or {}).get(k, 0) for k, v in after.items()}
    return {k: round(v, 6) if k == "api_cost_usd" else int(v) for k, v in spent.items()}


def costs_of(adapter: Adapter, n: int, seconds: float) -> dict[str, Any]:
    fit = adapter.fit_result_
    costs: dict[str, Any] = {
        "fit_seconds": round(fit.fit_seconds, 3) if fit else None,
        "trainable_params": fit.trainable_params if fit else 0,
        "predict_examples_per_second": round(n / max(seconds, 1e-9), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    # measured from the adapter's state: saving a copy of a 10 GB knowledge base to read its size
    # would cost more than the evaluation
    costs["artifact_mb"] = round(adapter.artifact_bytes() / 2**20, 2)
    return costs

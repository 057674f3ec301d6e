"""Reference profiles and drift tests: is live traffic still what the adapter was fitted for?

At fit time an adapter records a :class:`Profile` of held-out data (its evaluation data when
given, else a sample of the training data): the predicted-label counts, the confidences, and a
sketch of the inputs (hashed word and word-pair counts, l2-normalized: a fixed, model-free
embedding, so a profile costs no model and compares across adapters). :func:`drift` compares a
window of live traffic with it: chi² on labels, Kolmogorov–Smirnov on confidences and an MMD
permutation test on the input sketches. The alarm fires when any p-value is below
``alpha / number of tests`` (Bonferroni), so a window of in-distribution traffic raises a false
alarm with probability at most ``alpha``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SKETCH_FEATURES = 1024
PROFILE_LIMIT = 500
PERMUTATIONS = 200


def sketch(texts: list[str]) -> np.ndarray:
    """A fixed embedding of each text: hashed unigram and bigram counts, l2-normalized."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(
        n_features=SKETCH_FEATURES, ngram_range=(1, 2), alternate_sign=False, norm="l2"
    )
    return np.asarray(vectorizer.transform(texts).toarray(), dtype=np.float32)


@dataclass
class Profile:
    """What an adapter's predictions and inputs looked like on held-out data."""

    labels: dict[str, int] = field(default_factory=dict)
    confidences: list[float] = field(default_factory=list)
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, SKETCH_FEATURES), np.float32))
    source: str = "validation"
    examples: int = 0

    def save(self, directory: Path) -> None:
        meta = {
            "labels": self.labels,
            "confidences": self.confidences,
            "source": self.source,
            "examples": self.examples,
        }
        (directory / "profile.json").write_text(json.dumps(meta))
        np.save(directory / "profile_features.npy", self.features)

    @classmethod
    def load(cls, directory: Path) -> Profile | None:
        path = directory / "profile.json"
        if not path.is_file():
            return None
        meta = json.loads(path.read_text())
        features = np.load(directory / "profile_features.npy")
        return cls(meta["labels"], meta["confidences"], features, meta["source"], meta["examples"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "confidences": len(self.confidences),
            "inputs": len(self.features),
            "source": self.source,
            "examples": self.examples,
        }


def input_text(record: dict[str, Any], fields: list[str]) -> str:
    return " ".join(str(record.get(f, "")) for f in fields) if fields else str(record)


def build_profile(
    adapter: Any, records: list[dict[str, Any]], source: str, seed: int = 0
) -> Profile:
    """The profile of ``adapter`` on up to :data:`PROFILE_LIMIT` of ``records``."""
    rng = np.random.default_rng(seed)
    if len(records) > PROFILE_LIMIT:
        records = [records[i] for i in sorted(rng.choice(len(records), PROFILE_LIMIT, False))]
    fields = list(adapter.task.text_fields)
    profile = Profile(
        features=sketch([input_text(r, fields) for r in records]),
        source=source,
        examples=len(records),
    )
    if adapter.task.kind == "classification":
        predictions = adapter._predict(records)
        profile.labels = dict(Counter(p.label for p in predictions if p.label is not None))
        profile.confidences = [max(p.scores.values()) for p in predictions if p.scores]
    return profile


def _mmd(
    x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Squared MMD with an RBF kernel (median-distance bandwidth) and its permutation p-value.

    Every permutation's statistic comes from one matrix product: with ``a`` the 0/1 indicator
    of the first group, the within-group kernel sums are ``a·Ka`` and ``b·Kb``, the cross sum
    ``a·Kb``."""
    joined = np.concatenate([x, y]).astype(np.float64)
    squared = np.sum(joined**2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * joined @ joined.T, 0)
    positive = distances[np.triu_indices(len(joined), 1)]
    bandwidth = float(np.median(positive[positive > 0])) if (positive > 0).any() else 1.0
    kernel = np.exp(-distances / bandwidth)
    np.fill_diagonal(kernel, 0.0)  # unbiased estimate: no self-similarity terms
    n, m = len(x), len(y)
    groups = np.zeros((permutations + 1, n + m))
    groups[0, :n] = 1
    for row in range(1, permutations + 1):
        groups[row, rng.permutation(n + m)[:n]] = 1
    other = 1 - groups
    projected = groups @ kernel  # (p, N)
    within_x = np.einsum("pn,pn->p", projected, groups)
    cross = np.einsum("pn,pn->p", projected, other)
    within_y = np.einsum("pn,pn->p", other @ kernel, other)
    stats = within_x / (n * (n - 1)) + within_y / (m * (m - 1)) - 2 * cross / (n * m)
    observed = float(stats[0])
    return observed, float((np.sum(stats[1:] >= observed) + 1) / (permutations + 1))


def drift(
    profile: Profile,
    labels: list[str] | None = None,
    confidences: list[float] | None = None,
    features: np.ndarray | None = None,
    alpha: float = 0.05,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> dict[str, Any]:
    """Tests of a window of live traffic against ``profile``: p-values, statistics, alarm."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    tests: dict[str, dict[str, float]] = {}
    if labels and profile.labels:
        names = sorted(set(profile.labels) | set(labels))
        live = Counter(labels)
        table = np.array(
            [[profile.labels.get(n, 0) for n in names], [live.get(n, 0) for n in names]]
        )
        table = table[:, table.sum(0) > 0]
        if table.shape[1] > 1:
            chi2, p, _, _ = stats.chi2_contingency(table)
            tests["labels_chi2"] = {"statistic": float(chi2), "p_value": float(p)}
    if confidences and profile.confidences:
        ks = stats.ks_2samp(profile.confidences, confidences)
        tests["confidence_ks"] = {"statistic": float(ks.statistic), "p_value": float(ks.pvalue)}
    if features is not None and len(features) > 1 and len(profile.features) > 1:
        reference = profile.features
        if len(reference) > 2 * len(features):  # keep the permutation test quick
            reference = reference[rng.choice(len(reference), 2 * len(features), replace=False)]
        statistic, p = _mmd(reference, np.asarray(features, np.float32), permutations, rng)
        tests["inputs_mmd"] = {"statistic": statistic, "p_value": p}
    threshold = alpha / max(len(tests), 1)
    return {
        "tests": tests,
        "threshold": threshold,
        "alarm": any(t["p_value"] < threshold for t in tests.values()),
        "window": max(
            len(labels or []), len(confidences or []), 0 if features is None else len(features)
        ),
    }


class DriftWindow:
    """The last ``size`` observations of live traffic, tested every ``every`` new ones."""

    def __init__(
        self, profile: Profile | None, size: int = 200, every: int = 50, alpha: float = 0.05
    ) -> None:
        from collections import deque

        self.profile, self.size, self.every, self.alpha = profile, size, every, alpha
        self.labels: deque[str] = deque(maxlen=size)
        self.confidences: deque[float] = deque(maxlen=size)
        self.texts: deque[str] = deque(maxlen=size)  # sketched when a test is due
        self.seen = 0
        self.last: dict[str, Any] | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=500)  # every result, for plots

    def observe(
        self, texts: list[str], labels: list[str | None], confidences: list[float | None]
    ) -> dict[str, Any] | None:
        """Add observations; returns a fresh drift result when one was computed."""
        self.texts.extend(texts)
        self.labels.extend(label for label in labels if label is not None)
        self.confidences.extend(c for c in confidences if c is not None)
        before, self.seen = self.seen, self.seen + len(texts)
        due = self.seen // self.every > before // self.every
        if self.profile is None or len(self.texts) < self.size or not due:
            return None
        self.last = drift(
            self.profile,
            list(self.labels),
            list(self.confidences),
            sketch(list(self.texts)),
            self.alpha,
            seed=self.seen,
        )
        self.last["seen"] = self.seen
        self.history.append(self.last)
        return self.last


def drift_report(
    log: str | Path,
    reference: str | Path,
    model: str | None = None,
    window: int = 200,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The drift tests of a request log, window by window (consecutive, not overlapping),
    against the saved adapter ``reference``'s profile — what the server computes live."""
    from promptkit.adapters import load_adapter
    from promptkit.errors import PromptkitError
    from promptkit.serve.requestlog import read_log

    adapter = load_adapter(reference)
    if adapter.profile_ is None:
        raise PromptkitError(
            f"{reference} has no reference profile (saved by an older promptkit); call "
            "adapter.build_profile(validation_data) and save it again."
        )
    entries = list(read_log(log, model))
    if not entries:
        raise PromptkitError(
            f"{log} holds no requests" + (f" for model {model!r}." if model else ".")
        )
    history = []
    for start in range(0, len(entries) - window + 1, window):
        part = entries[start : start + window]
        texts = [e["input"] for e in part if "input" in e]
        result = drift(
            adapter.profile_,
            [e["label"] for e in part if "label" in e],
            [e["confidence"] for e in part if "confidence" in e],
            sketch(texts) if len(texts) == len(part) else None,
            alpha,
            seed=start,
        )
        result["seen"] = start + window
        history.append(result)
    return {
        "model": model or entries[0].get("model", "model"),
        "kind": adapter.task.kind,
        "profile": adapter.profile_.to_dict(),
        "window": {"size": window, "filled": min(window, len(entries)), "seen": len(entries)},
        "windows": len(history),
        "alarms": sum(r["alarm"] for r in history),
        "drift": history[-1] if history else None,
        "history": [
            {
                "seen": r["seen"],
                "alarm": r["alarm"],
                "threshold": r["threshold"],
                "p_values": {t: v["p_value"] for t, v in r["tests"].items()},
            }
            for r in history
        ],
    }

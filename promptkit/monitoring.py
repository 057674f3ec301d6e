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

import functools
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SKETCH_FEATURES = 1024
PROFILE_LIMIT = 500
PERMUTATIONS = 200


@functools.cache
def _vectorizer() -> Any:
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        n_features=SKETCH_FEATURES, ngram_range=(1, 2), alternate_sign=False, norm="l2"
    )


def sketch(texts: list[str]) -> np.ndarray:
    """A fixed embedding of each text: hashed unigram and bigram counts, l2-normalized."""
    if not texts:
        return np.zeros((0, SKETCH_FEATURES), np.float32)
    return np.asarray(_vectorizer().transform(texts).toarray(), dtype=np.float32)


@dataclass
class Profile:
    """What an adapter's predictions and inputs looked like on held-out data."""

    labels: dict[str, int] = field(default_factory=dict)
    confidences: list[float] = field(default_factory=list)
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, SKETCH_FEATURES), np.float32))
    source: str = "validation"
    examples: int = 0
    _gram: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def gram(self) -> np.ndarray:
        """Inner products of the reference sketches (computed once: every drift test uses
        them)."""
        if self._gram is None or len(self._gram) != len(self.features):
            features = self.features.astype(np.float32)
            self._gram = features @ features.T
        return self._gram

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
    gram: np.ndarray, n: int, permutations: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Squared MMD with an RBF kernel (median-distance bandwidth) between the first ``n``
    points and the rest, given their inner products ``gram``, and its permutation p-value.

    Every permutation's statistic comes from one matrix product: with ``a`` the 0/1 indicator
    of the first group, the within-group kernel sums are ``a·Ka`` and ``b·Kb``, the cross sum
    ``a·Kb``."""
    squared = np.diag(gram)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * gram, 0)
    # the bandwidth from a sample of pairs: the pooled points decide it, never the split, so
    # the permutation test stays exact
    total = len(gram)
    first, second = rng.integers(0, total, (2, 4096))
    pairs = distances[first, second]
    pairs = pairs[(first != second) & (pairs > 0)]
    bandwidth = float(np.median(pairs)) if pairs.size else 1.0
    kernel = np.exp(-distances / bandwidth).astype(np.float32)
    np.fill_diagonal(kernel, 0.0)  # unbiased estimate: no self-similarity terms
    m = total - n
    groups = np.zeros((permutations + 1, total), np.float32)
    groups[:, :n] = 1
    groups[1:] = rng.permuted(groups[1:], axis=1)  # row 0 is the observed split
    other = 1 - groups
    projected = groups @ kernel  # (p, N)
    within_x = np.einsum("pn,pn->p", projected, groups)
    cross = np.einsum("pn,pn->p", projected, other)
    # other·K = 1·K - groups·K: the kernel's column sums less the projection already made
    within_y = np.einsum("pn,pn->p", kernel.sum(0)[None, :] - projected, other)
    within_x, within_y, cross = (v.astype(np.float64) for v in (within_x, within_y, cross))
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
        reference = profile.features.astype(np.float32)
        chosen = np.arange(len(reference))
        if len(reference) > 2 * len(features):  # keep the permutation test quick
            chosen = rng.choice(len(reference), 2 * len(features), replace=False)
        current = np.asarray(features, np.float32)
        reference = reference[chosen]
        cross_gram = reference @ current.T
        gram = np.block(
            [
                [profile.gram()[np.ix_(chosen, chosen)], cross_gram],
                [cross_gram.T, current @ current.T],
            ]
        )
        statistic, p = _mmd(gram, len(reference), permutations, rng)
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
        self.texts: deque[str] = deque(maxlen=size)
        # each text is sketched once, when the first test after its arrival is due
        self.features: deque[np.ndarray] = deque(maxlen=size)
        self.unsketched: deque[str] = deque(maxlen=size)
        self.seen = 0
        self.last: dict[str, Any] | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=500)  # every result, for plots
        self._lock = threading.Lock()

    def observe(
        self, texts: list[str], labels: list[str | None], confidences: list[float | None]
    ) -> dict[str, Any] | None:
        """Add observations; returns a fresh drift result when one was computed."""
        return self.test(self.snapshot()) if self.add(texts, labels, confidences) else None

    def add(
        self, texts: list[str], labels: list[str | None], confidences: list[float | None]
    ) -> bool:
        """Record observations (cheap: no sketch, no test); True when a test is due."""
        self.texts.extend(texts)
        self.unsketched.extend(texts)
        self.labels.extend(label for label in labels if label is not None)
        self.confidences.extend(c for c in confidences if c is not None)
        before, self.seen = self.seen, self.seen + len(texts)
        due = self.seen // self.every > before // self.every
        return self.profile is not None and len(self.texts) >= self.size and due

    def snapshot(self) -> WindowSnapshot:
        """The window as it stands, for :meth:`test` to run on another thread while
        observations keep arriving."""
        fresh = list(self.unsketched)
        self.unsketched.clear()
        return WindowSnapshot(fresh, list(self.labels), list(self.confidences), self.seen)

    def test(self, snapshot: WindowSnapshot) -> dict[str, Any]:
        """Sketch the snapshot's new texts and run the drift tests on the window."""
        assert self.profile is not None
        with self._lock:  # one test at a time: the sketches kept are shared
            self.features.extend(sketch(snapshot.fresh))
            result = drift(
                self.profile,
                snapshot.labels,
                snapshot.confidences,
                np.stack(list(self.features)),
                self.alpha,
                seed=snapshot.seen,
            )
            result["seen"] = snapshot.seen
            self.last = result
            self.history.append(result)
        return result


@dataclass
class WindowSnapshot:
    """What a drift test runs on: the texts not sketched yet, the window's labels and
    confidences, and how many observations had been seen."""

    fresh: list[str]
    labels: list[str]
    confidences: list[float]
    seen: int


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

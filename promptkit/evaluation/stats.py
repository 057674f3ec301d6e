"""Uncertainty: vectorized bootstrap intervals (of metrics and of paired differences), McNemar's
exact test, paired permutation test.

Resampling weights are drawn in blocks (a matrix of counts per block of resamples) and applied to
every metric at once with matrix products, so there is no Python loop per resample and memory
stays bounded by the block size, whatever the number of examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from promptkit.metrics import MetricSpec

BLOCK_CELLS = 4_000_000  # resample weights held at once: (block size) x (examples)


@dataclass
class Interval:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def weight_blocks(n: int, resamples: int, seed: int, repeats: int = 1) -> Iterator[np.ndarray]:
    """Bootstrap count matrices (rows: resamples, columns: examples), block by block.

    With ``repeats > 1`` the ``n`` rows are ``repeats`` stacked copies of the same examples (one
    per training seed); an example is then resampled with all its copies (a cluster bootstrap),
    so an interval reflects the test sample's size, not ``repeats`` times it.
    """
    if repeats > 1:
        for counts in weight_blocks(n // repeats, resamples, seed):
            yield np.tile(counts, (1, repeats))
        return
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, BLOCK_CELLS // max(n, 1)))
    done = 0
    while done < resamples:
        size = min(block, resamples - done)
        draws = rng.integers(0, n, size=(size, n))
        offsets = (np.arange(size) * n)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=size * n)
        yield counts.reshape(size, n).astype(np.float64)
        done += size


def resampled(spec: MetricSpec, batch: Any, weights: np.ndarray) -> np.ndarray:
    """The metric under each row of resampling weights."""
    if spec.weighted is not None:
        return spec.weighted(batch, weights)
    values = spec.values(batch)
    sums = weights @ values
    return spec.reduce(sums, weights.sum(1), batch)


def bootstrap(
    specs: list[MetricSpec],
    batch: Any,
    n: int,
    resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    repeats: int = 1,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals for several metrics on the same resamples."""
    draws: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    for weights in weight_blocks(n, resamples, seed, repeats):
        for spec in specs:
            draws[spec.name].append(np.atleast_1d(resampled(spec, batch, weights)))
    out = {}
    for spec in specs:
        values = np.concatenate(draws[spec.name])
        values = values[np.isfinite(values)]
        point = spec.compute(batch)
        if len(values) == 0:
            out[spec.name] = Interval(point, float("nan"), float("nan"))
            continue
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        out[spec.name] = Interval(point, float(low), float(high))
    return out


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """McNemar's exact test on paired correctness: a two-sided binomial test on the discordant."""
    from scipy.stats import binomtest

    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)
    return {"a_only": b, "b_only": c, "p_value": p}


def paired_permutation(
    a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided paired permutation test of mean(a - b) = 0 by random sign flips.

    Exact (all 2^n sign patterns) when that is no more than ``resamples``; the p-value follows
    ``scipy.stats.permutation_test(..., permutation_type="samples")``.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(diff)
    observed = diff.mean() if n else 0.0
    if n == 0 or np.all(diff == 0):
        return 1.0
    if 2**n <= resamples:
        patterns = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        null = (patterns * diff).mean(1)
        adjust = 0
    else:
        rng = np.random.default_rng(seed)
        null = np.empty(resamples)
        block = max(1, BLOCK_CELLS // n)
        for start in range(0, resamples, block):
            size = min(block, resamples - start)
            signs = rng.integers(0, 2, size=(size, n)) * 2 - 1
            null[start : start + size] = (signs * diff).mean(1)
        adjust = 1
    gamma = np.abs(observed) * 1e-14 + 1e-300
    less = ((null <= observed + gamma).sum() + adjust) / (len(null) + adjust)
    greater = ((null >= observed - gamma).sum() + adjust) / (len(null) + adjust)
    return float(min(1.0, 2 * min(less, greater)))


def paired_differences(
    spec: MetricSpec,
    batch_a: Any,
    batch_b: Any,
    n: int,
    resamples: int = 1000,
    seed: int = 0,
    repeats: int = 1,
) -> np.ndarray:
    """metric(a) - metric(b) on each bootstrap resample, the same resamples for both (the finite
    ones)."""
    diffs = []
    for weights in weight_blocks(n, resamples, seed, repeats):
        diffs.append(
            np.atleast_1d(resampled(spec, batch_a, weights))
            - np.atleast_1d(resampled(spec, batch_b, weights))
        )
    values = np.concatenate(diffs)
    return values[np.isfinite(values)]


def paired_bootstrap(
    spec: MetricSpec,
    batch_a: Any,
    batch_b: Any,
    n: int,
    resamples: int = 1000,
    seed: int = 0,
    repeats: int = 1,
) -> float:
    """Two-sided p-value that metric(a) - metric(b) = 0, from the same resamples for both."""
    return bootstrap_p_value(
        paired_differences(spec, batch_a, batch_b, n, resamples, seed, repeats)
    )


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value that a paired difference is 0, from its bootstrap resamples."""
    if len(differences) == 0:
        return 1.0
    p_low = (np.sum(differences <= 0) + 1) / (len(differences) + 1)
    p_high = (np.sum(differences >= 0) + 1) / (len(differences) + 1)
    return float(min(1.0, 2 * min(p_low, p_high)))


def difference_interval(differences: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of a paired difference from its bootstrap resamples."""
    if len(differences) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(differences, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)

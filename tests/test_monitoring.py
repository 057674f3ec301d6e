"""Reference profiles and drift tests: quiet on in-distribution traffic, loud on a shift."""

from __future__ import annotations

import numpy as np

from promptkit.monitoring import DriftWindow, Profile, drift, sketch
from promptkit.testing import toy_classification

NEWS = ["wheat exports rose to {n} tonnes as the ministry cut tariffs",
        "grain shipments from the port fell {n} pct in the quarter, traders said",
        "the central bank held rates while corn futures climbed {n} cents"]


def _traffic(n, seed, shifted=False):
    rng = np.random.default_rng(seed)
    if shifted:
        texts = [NEWS[i % 3].format(n=int(rng.integers(1, 999))) for i in range(n)]
        labels = ["negative"] * n  # a news wire looks uniformly "negative" to a review model
        confidences = list(rng.uniform(0.5, 0.7, n))
    else:
        texts = [r["text"] for r in toy_classification(n, seed=seed)]
        labels = [("positive", "negative")[int(x)] for x in rng.integers(0, 2, n)]
        confidences = list(rng.beta(8, 2, n) * 0.5 + 0.5)
    return texts, labels, confidences


def _profile():
    texts, labels, confidences = _traffic(400, seed=0)
    counts = {label: labels.count(label) for label in set(labels)}
    return Profile(counts, confidences, sketch(texts), "validation", 400)


def test_in_distribution_windows_rarely_alarm():
    profile = _profile()
    alarms = 0
    for seed in range(1, 21):
        texts, labels, confidences = _traffic(200, seed)
        result = drift(profile, labels, confidences, sketch(texts), permutations=100, seed=seed)
        assert set(result["tests"]) == {"labels_chi2", "confidence_ks", "inputs_mmd"}
        alarms += result["alarm"]
    assert alarms <= 2  # Bonferroni over three tests: about 5% of windows at most


def test_a_domain_shift_alarms_on_every_test():
    texts, labels, confidences = _traffic(200, seed=3, shifted=True)
    result = drift(_profile(), labels, confidences, sketch(texts), permutations=100)
    assert result["alarm"]
    assert all(t["p_value"] < result["threshold"] for t in result["tests"].values())


def test_window_tests_every_n_once_full_and_profile_round_trips(tmp_path):
    profile = _profile()
    profile.save(tmp_path)
    loaded = Profile.load(tmp_path)
    assert loaded.labels == profile.labels and np.allclose(loaded.features, profile.features)
    window = DriftWindow(loaded, size=100, every=50)
    texts, labels, confidences = _traffic(100, seed=5)
    assert window.observe(texts[:50], labels[:50], confidences[:50]) is None  # not full yet
    first = window.observe(texts[50:], labels[50:], confidences[50:])
    assert first is not None and first["window"] == 100 and not first["alarm"]
    shifted = _traffic(100, seed=6, shifted=True)
    results = [window.observe(shifted[0][i:i + 50], shifted[1][i:i + 50], shifted[2][i:i + 50])
               for i in (0, 50)]
    assert results[-1]["alarm"] and len(window.history) == 3

"""Drift alarms: how often they fire on in-distribution traffic, and how fast on a real shift.

    python benchmarks/drift.py [--trials 100] [--window 200]

The classifier of benchmarks/serve_load.py (MiniLM ``full`` on Rotten Tomatoes, its profile
recorded on validation reviews) watches simulated traffic through the server's own
``DriftWindow``. False alarms: ``--trials`` windows of ``--window`` requests drawn from the
test reviews (each window without repeats). Detection: ``--trials`` times, a window of test
reviews, then traffic switches to Reuters-21578 news articles; a trial succeeds if the alarm
fires within ``--window`` requests of the switch. Writes benchmarks/results/drift.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from run import machine
from serve_load import classifier

import promptkit as pk
from promptkit.monitoring import DriftWindow

OUT = Path(__file__).parent / "results" / "drift.json"


def observed(adapter: Any, texts: list[str]) -> list[tuple[str, str, float]]:
    predictions = adapter.predict(texts)
    return [(t, p.label, max(p.scores.values())) for t, p in zip(texts, predictions, strict=True)]


def feed(window: DriftWindow, rows: list[tuple[str, str, float]], every: int) -> list[int]:
    """Positions (1-based) after which a test ran and alarmed."""
    alarms = []
    for start in range(0, len(rows), every):
        part = rows[start : start + every]
        result = window.observe([r[0] for r in part], [r[1] for r in part], [r[2] for r in part])
        if result is not None and result["alarm"]:
            alarms.append(start + len(part))
    return alarms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--every", type=int, default=100, help="requests between tests (the server default)")
    parser.add_argument("--work", default="runs/serve-bench")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    adapter = classifier(Path(args.work) / "sentiment", args.reuse, smoke=False)
    reviews = observed(adapter, [r["text"] for r in pk.datasets.load("rotten_tomatoes")["test"]])
    news_data = pk.datasets.load("reuters_grain")
    news = observed(adapter, [r["text"] for split in ("train", "test") for r in news_data[split]])
    rng = np.random.default_rng(0)
    false_alarms = 0
    for _ in range(args.trials):
        window = DriftWindow(adapter.profile_, args.window, args.window)
        picked = [reviews[i] for i in rng.choice(len(reviews), args.window, replace=False)]
        false_alarms += bool(feed(window, picked, args.window))
    delays = []
    for _ in range(args.trials):
        window = DriftWindow(adapter.profile_, args.window, args.every)
        before = [reviews[i] for i in rng.choice(len(reviews), args.window, replace=False)]
        after = [news[i] for i in rng.choice(len(news), 2 * args.window, replace=False)]
        feed(window, before, args.every)
        alarms = feed(window, after, args.every)
        delays.append(alarms[0] if alarms else None)
    detected = [d for d in delays if d is not None and d <= args.window]
    result = {
        "window": args.window, "tested_every": args.every, "trials": args.trials,
        "reference": adapter.profile_.to_dict() if adapter.profile_ else None,
        "false_alarm_rate": false_alarms / args.trials,
        "detection_within_one_window": len(detected) / args.trials,
        "median_requests_to_alarm": float(np.median([d for d in delays if d is not None]))
        if any(d is not None for d in delays) else None,
        "traffic": "in-distribution: Rotten Tomatoes test reviews; shift: Reuters-21578 grain "
                   "articles (train and test)",
        "machine": machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

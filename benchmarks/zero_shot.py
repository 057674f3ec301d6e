"""SmolLM2-135M-Instruct prompting on Rotten Tomatoes: zero-shot, calibrated, 4-shot.

    python benchmarks/zero_shot.py [--n 200]

Prints accuracy against the majority-class rate on the first N test examples.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import promptkit as pk


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    data = pk.datasets.load("rotten_tomatoes")
    test = data["test"][: args.n]
    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    majority = max(Counter(r["label"] for r in test).values()) / len(test)
    print(f"majority-class rate {majority:.3f} on {len(test)} test examples")
    for settings in ({}, {"calibrate": True}, {"shots": 4}, {"shots": 4, "calibrate": True},
                     {"shots": 4, "chat": False}):
        start = time.perf_counter()
        adapter = pk.create_adapter("prompt", task=task, batch_size=16, **settings)
        adapter.fit(data["train"])
        predictions = adapter.predict(test)
        accuracy = sum(p.label == r["label"] for p, r in zip(predictions, test, strict=True)) / len(test)
        print(f"{settings or 'zero-shot'}: accuracy {accuracy:.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

"""Spread of held-out accuracy over training seeds: the demo's sentiment adapters, refit per seed.

    python benchmarks/seed_spread.py [--adapters prompt_tuning,lora] [--seeds 0,1,2]

Uses the demo's data (Rotten Tomatoes subsampled with seed 0: 2,000 train, 300 validation, 500
test) and the demo's settings for each adapter, and prints the report's spread-over-seeds table;
the report is written to runs/seed-spread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from promptkit.evaluation import Evaluator
from promptkit.runner import build_adapter, build_task, load_config, load_splits

DEMO = Path(__file__).resolve().parent.parent / "examples" / "configs" / "demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", default="prompt_tuning")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/seed-spread")
    args = parser.parse_args()
    config = load_config(DEMO)
    experiment = config.experiments[0]
    splits = load_splits(experiment, config.seed)
    task = build_task(experiment.task, splits["train"])
    adapters = {
        name: build_adapter(experiment.adapters[name], task, {})
        for name in args.adapters.split(",")
    }
    report = Evaluator(task, resamples=1000).compare(
        adapters,
        splits["test"],
        seeds=[int(s) for s in args.seeds.split(",")],
        train=splits["train"],
        eval_data=splits["validation"],
    )
    report.title = f"Spread over seeds {args.seeds} (demo sentiment settings)"
    print(report.table())
    report.save(args.out)


if __name__ == "__main__":
    main()

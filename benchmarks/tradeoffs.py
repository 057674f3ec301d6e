"""Choosing by cost: full, lora, kNN, a distilled 3-layer student and the ONNX int8 export in one
report, with the quality-against-cost plot and its Pareto front.

    python benchmarks/tradeoffs.py [--reuse] [--smoke]

All on Rotten Tomatoes (train: the first 2,000 reviews; test: all 1,276): the MiniLM ``full``
classifier of benchmarks/serve_load.py (reused with --reuse), its int8 ONNX export, a
``distill`` student keeping layers 0, 2 and 4 of it, a ``lora`` MiniLM and ``knn`` over MiniLM
embeddings. Each adapter predicts the test split once to warm up, then the evaluator times it.
The report goes to runs/tradeoffs (report.html holds the plot), the summary to
benchmarks/results/tradeoffs.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serve_load import classifier

import promptkit as pk

OUT = Path(__file__).parent / "results" / "tradeoffs.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reuse", action="store_true", help="load the classifier a past run saved")
    parser.add_argument("--smoke", action="store_true", help="tiny model, toy data (a test)")
    parser.add_argument("--out", default="runs/tradeoffs")
    parser.add_argument("--results", default=str(OUT))
    args = parser.parse_args()
    out = Path(args.out)
    full = classifier(out / "full", args.reuse, args.smoke)
    task = full.task
    if args.smoke:
        train = pk.testing.toy_classification(48)
        test = pk.testing.toy_classification(32, seed=9)
        encoder = pk.testing.tiny_model("bert")
        student = f"{encoder}-l1"
    else:
        data = pk.datasets.load("rotten_tomatoes")
        train, test = data["train"][:2000], data["test"]
        encoder, student = "minilm", "minilm-l3"
    settings = {"epochs": 1, "batch_size": 32, "max_length": 64, "save_checkpoints": False,
                "warmup_ratio": 0.1, "logging_steps": 50}
    full.export(out / "int8", format="onnx", quantize="int8")
    adapters = {
        "full": full,
        "int8": pk.load_adapter(out / "int8"),
        "distilled_l3": pk.create_adapter("distill", teacher=full, student=student, task=task,
                                          learning_rate=1e-4, **settings),
        "lora": pk.create_adapter("lora", model=encoder, task=task, learning_rate=2e-3, r=8,
                                  **settings),
        "knn": pk.create_adapter("knn", task=task, embedder=encoder, top_k=10),
    }
    for name, adapter in adapters.items():
        if not adapter.fitted_:
            print(f"== fitting {name}")
            adapter.fit(train)
        adapter.predict(test[:64])  # warm-up: first calls allocate and plan
    report = pk.Evaluator(task).compare(adapters, test)
    report.title = f"Quality against cost on Rotten Tomatoes ({len(test)} test reviews)"
    print(report.table())
    report.save(out / "report")
    summary = {
        name: {"accuracy": round(report[name].metrics["accuracy"].value, 4),
               "predict_examples_per_second": round(
                   report[name].costs["predict_examples_per_second"], 1),
               "artifact_mb": report[name].costs.get("artifact_mb")}
        for name in adapters
    }
    result = {"pareto_front": report.pareto_front(), "adapters": summary,
              "train_examples": len(train), "test_examples": len(test), "smoke": args.smoke}
    print(json.dumps(result, indent=1))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

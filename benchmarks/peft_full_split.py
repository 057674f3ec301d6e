"""Test accuracy of the PEFT methods after one epoch over the full Rotten Tomatoes train split.

    python benchmarks/peft_full_split.py [--adapters prompt_tuning,ia3]

MiniLM, max_length 64, batch 32, seed 0 (the settings of the fit benchmark).
"""

from __future__ import annotations

import argparse
import json

import promptkit as pk

LEARNING_RATES = {"prompt_tuning": 3e-2, "p_tuning": 3e-3, "ia3": 3e-3, "lora": 5e-4,
                  "full": 5e-5}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapters", default="prompt_tuning,ia3")
    args = parser.parse_args()
    data = pk.datasets.load("rotten_tomatoes")
    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    for name in args.adapters.split(","):
        adapter = pk.create_adapter(name, model="minilm", task=task, epochs=1, batch_size=32,
                                    max_length=64, seed=0, learning_rate=LEARNING_RATES[name],
                                    save_checkpoints=False, logging_steps=100)
        result = adapter.fit(data["train"])
        report = pk.Evaluator(task, metrics=["accuracy", "f1_macro"]).evaluate(
            adapter, data["test"], name=name)
        accuracy = report[name].metrics["accuracy"]
        print(json.dumps({"adapter": name, "learning_rate": LEARNING_RATES[name],
                          "accuracy": accuracy.to_dict(),
                          "f1_macro": report[name].metrics["f1_macro"].to_dict(),
                          "fit_seconds": round(result.fit_seconds, 1),
                          "trainable_params": result.trainable_params}), flush=True)


if __name__ == "__main__":
    main()

"""Zero-shot sentiment through an OpenAI-compatible API against the same model scored locally.

    python benchmarks/api_parity.py [--n 200]

Serves SmolLM2-135M-Instruct with ``promptkit serve`` (a real server process), then classifies
the first ``--n`` Rotten Tomatoes test reviews with the ``sentiment`` template twice: locally
(label-word log-probabilities from the model, no chat template) and through the API (the same
label words scored from the server's echoed prompt log-probabilities). Reports both accuracies with 95% bootstrap intervals, their agreement, the
HTTP calls of a first and a second (cached) run; writes benchmarks/results/api_parity.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import machine

import promptkit as pk
from promptkit.testing import serving

OUT = Path(__file__).parent / "results" / "api_parity.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    reviews = pk.datasets.load("rotten_tomatoes")["test"][: args.n]
    task = pk.Task.classification(["negative", "positive"], template="sentiment")
    evaluator = pk.Evaluator(task, metrics=["accuracy"], resamples=1000)
    work = Path(tempfile.mkdtemp(prefix="api-parity-"))
    base = pk.create_adapter("prompt", model="smollm2-135m-instruct", max_new_tokens=8,
                             task=pk.Task.generation(template="closed_book_qa"))
    base.save(work / "smollm2")
    started = time.perf_counter()
    # an OpenAI-compatible server scores a completion prompt as raw text, so the local
    # reference scores it without the chat template too: the same measurement on both sides
    local = pk.create_adapter("prompt", model="smollm2-135m-instruct", task=task, chat=False)
    report = {"local": evaluator.evaluate(local, reviews, name="local")["local"]}
    local_s = time.perf_counter() - started
    with serving(work / "smollm2", options=["--name", "smollm2"]) as url:
        spec = {"provider": "openai", "name": "smollm2", "base_url": url + "/v1"}
        settings = {"model": spec, "task": task, "api_cache": str(work / "cache")}
        remote = pk.create_adapter("prompt", **settings)
        started = time.perf_counter()
        report["api"] = evaluator.evaluate(remote, reviews, name="api")["api"]
        api_s = time.perf_counter() - started
        first_calls = remote._model.calls
        again = pk.create_adapter("prompt", **settings)
        repeat = again.predict(reviews)
        second_calls = again._model.calls
    local_labels = [p.label for p in local.predict(reviews)]
    api_labels = [p.label for p in remote.predict(reviews)]
    result = {
        "reviews": len(reviews), "model": "smollm2-135m-instruct", "template": "sentiment",
        "local": report["local"].metrics["accuracy"].to_dict(),
        "api": report["api"].metrics["accuracy"].to_dict(),
        "api_within_local_interval": report["local"].metrics["accuracy"].low
        <= report["api"].metrics["accuracy"].value <= report["local"].metrics["accuracy"].high,
        "agreement": sum(a == b for a, b in zip(local_labels, api_labels, strict=True))
        / len(reviews),
        "scoring": {"local": "label-word log-probabilities (mean over tokens), no chat template",
                    "api": f"{remote.scoring_mode_} (echoed prompt log-probabilities)"},
        "seconds": {"local": local_s, "api": api_s},
        "http_calls": {"first_run": first_calls, "second_run": second_calls},
        "second_run_identical": [p.label for p in repeat] == api_labels,
        "machine": machine(),
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

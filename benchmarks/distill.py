"""Distillation on Rotten Tomatoes: a 3-layer MiniLM from the full MiniLM, and a classifier from
zero-shot SmolLM2 using unlabelled reviews only.

    python benchmarks/distill.py [--reuse] [--unlabelled 2000] [--recipes soft,...] [--smoke]

1. Teacher: the MiniLM ``full`` classifier of benchmarks/serve_load.py (reused with --reuse).
   Student: ``distill`` with ``student="minilm-l3"`` (layers 0, 2, 4 of the teacher's own
   weights), trained on the 10,201 training reviews (their labels and the teacher's soft labels).
2. Teacher: zero-shot SmolLM2-135M-Instruct (``prompt`` adapter, ``sentiment`` template).
   Student: a MiniLM ``distill`` student trained on ``--unlabelled`` training reviews with their
   labels removed, so it learns from the teacher alone. How (``RECIPES``: soft labels on every
   review, as they are or sharpened, or the teacher's most confident share per label as hard
   targets) is chosen on the 1,275 validation reviews; only the chosen recipe meets the test
   split.

Both are compared with their teachers on the test reviews (1,276) by promptkit's evaluator
(accuracy with intervals, McNemar's exact test, predict throughput). Results go to
benchmarks/results/distill.json, reports to runs/distill/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serve_load import classifier

import promptkit as pk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reuse", action="store_true", help="load the teacher a past run saved")
    parser.add_argument("--unlabelled", type=int, default=2000,
                        help="training reviews (labels removed) the LLM teacher labels")
    parser.add_argument("--smoke", action="store_true", help="tiny models, toy data (a test)")
    parser.add_argument("--out", default="runs/distill")
    parser.add_argument("--only-llm", action="store_true", help="skip the 3-layer student")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help="comma-separated RECIPES to choose from on validation")
    args = parser.parse_args()
    out = Path(args.out)
    task = pk.Task.classification(["negative", "positive"])
    if args.smoke:
        train = pk.testing.toy_classification(64)
        test = pk.testing.toy_classification(32, seed=9)
        encoder, llm, student = (pk.testing.tiny_model("bert"), pk.testing.tiny_model("gpt2"),
                                 f"{pk.testing.tiny_model('bert')}-l1")
    else:
        data = pk.datasets.load("rotten_tomatoes")
        train, test = data["train"], data["test"]
        encoder, llm, student = "minilm", "smollm2-135m-instruct", "minilm-l3"
    settings = {"epochs": 2, "batch_size": 32, "max_length": 64, "learning_rate": 1e-4,
                "warmup_ratio": 0.1, "save_checkpoints": False, "logging_steps": 50}
    result: dict[str, dict[str, object]] = {}

    if args.only_llm and RESULT.is_file():  # keep the 3-layer student's figures
        result = json.loads(RESULT.read_text())
    else:
        teacher = classifier(out / "minilm-teacher", args.reuse, args.smoke)
        small = pk.create_adapter("distill", teacher=teacher, student=student, task=teacher.task,
                                  temperature=2.0, alpha=0.5, **settings)
        fitted = small.fit(train)
        report = pk.Evaluator(teacher.task).compare({"teacher": teacher, "student": small}, test)
        report.title = f"MiniLM (6 layers) and its 3-layer student ({len(test)} reviews)"
        print(report.table())
        report.save(out / "layers")
        result["minilm_l3"] = summary(report, "teacher", "student", fitted.fit_seconds)
        result["minilm_l3"]["accuracy_share_of_teacher"] = round(
            report["student"].metrics["accuracy"].value / report["teacher"].metrics["accuracy"].value, 4)

    zero_shot = pk.create_adapter("prompt", model=llm, batch_size=16,
                                  task=pk.Task.classification(["negative", "positive"],
                                                              template="sentiment"))
    remember(zero_shot)
    unlabelled = [{"text": r["text"]} for r in train[: args.unlabelled]]
    # the recipe is chosen on validation reviews, never on the test split
    validation = (pk.testing.toy_classification(24, seed=8) if args.smoke
                  else pk.datasets.load("rotten_tomatoes")["validation"])
    truth = [r["label"] for r in validation]
    teacher_validation = sum(p.label == t for p, t in zip(zero_shot.predict(validation), truth,
                                                           strict=True)) / len(truth)
    scores, candidates = {}, {}
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        candidate = pk.create_adapter("distill", teacher=zero_shot, student=encoder, task=task,
                                      **{**settings, **recipe})
        candidate.fit(unlabelled)
        candidates[name] = candidate
        scores[name] = sum(p.label == t for p, t in zip(candidate.predict(validation), truth,
                                                        strict=True)) / len(truth)
        print(f"   {name}: validation accuracy {scores[name]:.4f} "
              f"(teacher {teacher_validation:.4f})")
    chosen = max(scores, key=lambda n: scores[n])
    learner = candidates[chosen]
    fitted = learner.fit_result_
    assert fitted is not None
    report = pk.Evaluator(task).compare({"zero_shot_llm": zero_shot, "student": learner}, test)
    report.title = (f"Zero-shot SmolLM2 and a MiniLM taught by it on {len(unlabelled)} unlabelled "
                    f"reviews ({len(test)} test reviews; recipe {chosen!r}, chosen on validation)")
    print(report.table())
    report.save(out / "llm")
    result["from_zero_shot_llm"] = summary(report, "zero_shot_llm", "student", fitted.fit_seconds)
    result["from_zero_shot_llm"].update(
        unlabelled_reviews=len(unlabelled), recipe=chosen, recipe_settings=RECIPES[chosen],
        validation_accuracy={"teacher": teacher_validation, **scores},
        validation_reviews=len(validation))
    print(json.dumps(result, indent=1))
    if not args.smoke:
        RESULT.write_text(json.dumps(result, indent=1) + "\n")


RESULT = Path(__file__).parent / "results" / "distill.json"

# how the student learns from the LLM, tried on validation: every review on soft labels alone
# (as they are, or sharpened: temperature 0.3 raises the probabilities to the power 1/0.3 before
# normalising them, since this teacher's sit between 0.37 and 0.68 for 90% of the first 500
# validation reviews), or the teacher's most confident half / quarter, the same number per label,
# as hard labels (alpha 0) or hard and soft together (alpha 0.5)
RECIPES: dict[str, dict[str, object]] = {
    "soft": {"temperature": 1.0, "alpha": 1.0},
    "soft_sharpened": {"temperature": 0.3, "alpha": 1.0},
    "confident_half_hard": {"confident": 0.5, "alpha": 0.0},
    "confident_half_mixed": {"confident": 0.5, "alpha": 0.5, "temperature": 1.0},
    "confident_quarter_hard": {"confident": 0.25, "alpha": 0.0},
}


def remember(adapter: pk.Adapter) -> None:
    """Memoize ``adapter.predict`` by text: the teacher labels the same reviews for every recipe."""
    seen: dict[str, object] = {}
    predict = adapter.predict

    def cached(records: list[dict[str, object]]) -> list[object]:
        missing = [r for r in records if r["text"] not in seen]
        for record, prediction in zip(missing, predict(missing) if missing else [], strict=True):
            seen[str(record["text"])] = prediction
        return [seen[str(r["text"])] for r in records]

    adapter.predict = cached  # type: ignore[method-assign]


def summary(report: pk.Report, teacher: str, student: str, fit_seconds: float) -> dict[str, object]:
    def accuracy(name: str) -> dict[str, float]:
        value = report[name].metrics["accuracy"]
        return {"value": round(value.value, 4), "low": round(value.low, 4),
                "high": round(value.high, 4)}

    test = next(c for c in report.comparisons if c.metric == "accuracy")
    speed = {n: report[n].costs["predict_examples_per_second"] for n in (teacher, student)}
    return {
        "teacher_accuracy": accuracy(teacher),
        "student_accuracy": accuracy(student),
        # student minus teacher, with its paired bootstrap interval
        "student_minus_teacher": {"value": round(-test.difference, 4),
                                  "low": round(-test.high, 4), "high": round(-test.low, 4)},
        "mcnemar_p": test.p_value,
        "examples_per_second": speed,
        "speedup": round(speed[student] / speed[teacher], 2),
        "student_fit_seconds": round(fit_seconds, 1),
    }


if __name__ == "__main__":
    main()

"""Register a metric with one call and use it in an evaluation, with its interval."""

import numpy as np

import promptkit as pk
from promptkit.adapters.base import Prediction
from promptkit.metrics import MetricSpec, register_metric


def confident_and_right(batch):
    """1 when the prediction is right with probability at least 0.9, else 0."""
    confidence = batch.scores.max(axis=1)
    return ((batch.refs == batch.preds) & (confidence >= 0.9)).astype(float)


register_metric(MetricSpec("confident_accuracy", "classification", higher_is_better=True,
                           per_example=confident_and_right, needs_scores=True,
                           description="Right, with probability at least 0.9."))

task = pk.Task.classification(["negative", "positive"])
rng = np.random.default_rng(0)
records = [{"text": f"review {i}", "label": "positive" if i % 2 else "negative"}
           for i in range(200)]
predictions = []
for record in records:
    p = float(np.clip(rng.normal(0.8 if record["label"] == "positive" else 0.2, 0.2), 0, 1))
    predictions.append(Prediction(label="positive" if p >= 0.5 else "negative",
                                  scores={"negative": 1 - p, "positive": p}))
result = pk.Evaluator(task, metrics=["accuracy", "confident_accuracy"]).score(
    task, records, predictions)
for name, interval in result.metrics.items():
    print(f"{name}: {interval.value:.3f} [{interval.low:.3f}, {interval.high:.3f}]")

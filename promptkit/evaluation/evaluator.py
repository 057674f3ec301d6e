"""``Evaluator``: score adapters on the same data, with intervals and paired significance tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from promptkit.adapters.base import Adapter, Prediction
from promptkit.data import DataSource
from promptkit.errors import ConfigError, DataError
from promptkit.evaluation.results import (
    AdapterResult,
    Comparison,
    api_spent,
    costs_of,
    data_hash,
    library_versions,
    safe_config,
)
from promptkit.evaluation.stats import (
    Interval,
    bootstrap,
    bootstrap_p_value,
    difference_interval,
    mcnemar_exact,
    paired_differences,
    paired_permutation,
)
from promptkit.metrics import (
    ClassificationBatch,
    GenerationBatch,
    MetricSpec,
    RetrievalBatch,
    metrics,
)
from promptkit.metrics import metrics as metric_registry
from promptkit.task import Task

CLASSIFICATION_DEFAULTS = ["accuracy", "f1_macro", "precision_macro", "recall_macro"]
SCORE_DEFAULTS = ["roc_auc", "log_loss", "ece"]
GENERATION_DEFAULTS = ["exact_match", "token_f1", "rouge_l", "bleu"]
RAG_DEFAULTS = ["context_support", "answer_context_overlap"]
GOLD_RAG_DEFAULTS = [
    "context_recall",
    "citation_accuracy",
    "context_support",
    "answer_context_overlap",
]
RETRIEVAL_DEFAULTS = ["hit_rate", "mrr", "ndcg_at_k", "recall_at_k", "precision_at_k"]


class Evaluator:
    """Metrics with bootstrap confidence intervals for one adapter; paired comparison of many.

    ``metrics=None`` picks defaults from the task kind (and adds score-based metrics when the
    predictions carry scores). Every interval uses the same resamples (fixed ``seed``).
    ``gold_field`` names the record field that identifies a question's gold passage (matched
    against the injected passages' metadata ``gold_key``): with it, retrieval-augmented
    adapters are also scored on context recall and citation accuracy.
    """

    def __init__(
        self,
        task: Task | None = None,
        metrics: Sequence[str] | None = None,
        resamples: int = 1000,
        alpha: float = 0.05,
        seed: int = 0,
        gold_field: str | None = None,
        gold_key: str = "heading",
    ) -> None:
        if resamples < 10:
            raise ConfigError(f"resamples must be at least 10, got {resamples}.")
        if not 0 < alpha < 0.5:
            raise ConfigError(f"alpha must be between 0 and 0.5, got {alpha}.")
        self.task = task
        self.metric_names = list(metrics) if metrics else None
        for name in self.metric_names or []:
            metric_registry.get(name)  # unknown names fail now, with suggestions
        self.resamples, self.alpha, self.seed = resamples, alpha, seed
        self.gold_field, self.gold_key = gold_field, gold_key

    # ---- adapters -----------------------------------------------------------------------------

    def evaluate(self, adapter: Adapter, data: DataSource, name: str | None = None) -> Report:
        return self.compare({name or adapter.name: adapter}, data)

    def compare(
        self,
        adapters: Mapping[str, Adapter],
        data: DataSource,
        progress: Callable[[str], None] | None = None,
        *,
        seeds: Sequence[int] | None = None,
        train: DataSource | None = None,
        eval_data: DataSource | None = None,
    ) -> Report:
        """Predict with every adapter on ``data`` and compare them pairwise.

        With ``seeds=[0, 1, 2]`` every adapter that trains is fitted once per seed on ``train``
        (a fresh copy each time; the adapters passed in are not changed). The metrics then pool
        every seed's predictions, with intervals that resample examples (all seeds of an example
        together); the report adds each metric's spread over seeds, and the paired tests use
        every seed.
        """
        if not adapters:
            raise ConfigError("compare() needs at least one adapter.")
        task = self.task or next(iter(adapters.values())).task
        records = task.prepare(data, name="evaluation data")
        seeds = list(seeds or [])
        if len(seeds) > 1 and train is None:
            raise ConfigError(f"seeds={seeds} refits each adapter once per seed: pass train=...")
        results = []
        for name, adapter in adapters.items():
            if progress:
                progress(name)
            if len(seeds) > 1:
                result = self._over_seeds(task, records, name, adapter, seeds, train, eval_data)
            else:
                spent_before = adapter.api_usage()
                start = time.perf_counter()
                predictions = adapter.predict(records)
                seconds = time.perf_counter() - start
                result = self.score(task, records, predictions, name)
                result.costs.update(costs_of(adapter, len(records), seconds))
                result.costs.update(api_spent(spent_before, adapter.api_usage()))
            result.config = {"adapter": adapter.name, **safe_config(adapter)}
            results.append(result)
        return self._report(task, results, records)

    def _over_seeds(
        self,
        task: Task,
        records: list[dict[str, Any]],
        name: str,
        adapter: Adapter,
        seeds: list[int],
        train: DataSource,
        eval_data: DataSource | None,
    ) -> AdapterResult:
        """Fit a copy of ``adapter`` per seed; score the pooled predictions of every seed."""
        runs: list[list[Prediction]] = []
        seconds, fitted = 0.0, adapter
        for seed in seeds:
            if adapter.learns or not runs:
                fitted = adapter.clone(seed=seed)
                fitted.fit(train, eval_data=eval_data if fitted.trains else None)
                start = time.perf_counter()
                runs.append(fitted.predict(records))
                seconds += time.perf_counter() - start
            else:  # nothing trains: every seed predicts the same
                runs.append(runs[0])
        pooled = [p for run in runs for p in run]
        result = self.score(task, records * len(seeds), pooled, name, repeats=len(seeds))
        for index, row in enumerate(result.predictions):
            row["seed"] = seeds[index // len(records)]
            row["index"] = index % len(records)
        result.seed_metrics = [self._point_metrics(task, records, run) for run in runs]
        result.costs.update(costs_of(fitted, len(records), seconds / len(runs)))
        return result

    def _point_metrics(
        self, task: Task, records: Sequence[Mapping[str, Any]], predictions: Sequence[Prediction]
    ) -> dict[str, float]:
        """Each metric's value on one run (no intervals)."""
        scored = Evaluator(self.task, self.metric_names, resamples=10, seed=self.seed).score(
            task, records, predictions
        )
        return {k: v.value for k, v in scored.metrics.items()}

    def score(
        self,
        task: Task,
        records: Sequence[Mapping[str, Any]],
        predictions: Sequence[Prediction],
        name: str = "predictions",
        repeats: int = 1,
    ) -> AdapterResult:
        """Metrics for precomputed predictions (aligned with ``records``).

        ``repeats > 1``: ``records`` holds that many stacked copies of the examples (one per
        training seed), and intervals resample examples with all their copies.
        """
        if len(records) != len(predictions):
            raise DataError(f"{len(predictions)} predictions for {len(records)} examples.")
        if task.pairs:
            raise ConfigError(
                f"A {task.kind} model is judged by what it ranks: compare retrievers with "
                "Evaluator.retrieval({name: query -> ranked ids}, queries, relevant) — e.g. "
                "searches of a knowledge base built with embedder=<the adapter's folder>, or "
                "reranked with rerank=<the adapter>."
            )
        if task.kind == "classification":
            result = self._score_classification(task, records, predictions, name, repeats)
        else:
            result = self._score_generation(task, records, predictions, name, repeats)
        result.repeats = repeats
        return result

    def _specs(self, defaults: list[str]) -> list[MetricSpec]:
        return [metrics.get(n) for n in (self.metric_names or defaults)]

    def _score_classification(
        self,
        task: Task,
        records: Sequence[Mapping[str, Any]],
        predictions: Sequence[Prediction],
        name: str,
        repeats: int = 1,
    ) -> AdapterResult:
        labels = task.labels
        have_scores = all(p.scores for p in predictions)
        scores = (
            np.array([[p.scores[label] for label in labels] for p in predictions])  # type: ignore[index]
            if have_scores
            else None
        )
        batch = ClassificationBatch.from_names(
            [r[task.label_field] for r in records],
            [str(p.label) for p in predictions],
            labels,
            scores,
        )
        specs = self._specs(CLASSIFICATION_DEFAULTS + (SCORE_DEFAULTS if have_scores else []))
        specs = [s for s in specs if have_scores or not s.needs_scores]
        intervals = bootstrap(
            specs, batch, len(records), self.resamples, self.alpha, self.seed, repeats
        )
        k = len(labels)
        confusion = np.bincount(batch.refs * k + batch.preds, minlength=k * k).reshape(k, k)
        per_class = {}
        for i, label in enumerate(labels):
            tp, predicted, actual = confusion[i, i], confusion[:, i].sum(), confusion[i].sum()
            precision = tp / predicted if predicted else 0.0
            recall = tp / actual if actual else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_class[label] = {
                "precision": float(precision),
                "recall": float(recall),
                "f1": float(f1),
                "support": int(actual),
            }
        rows = [
            {"index": i, "reference": r[task.label_field], **p.to_dict()}
            for i, (r, p) in enumerate(zip(records, predictions, strict=True))
        ]
        return AdapterResult(
            name,
            intervals,
            per_class=per_class,
            confusion=confusion.tolist(),
            predictions=rows,
            batch=batch,
        )

    def _score_generation(
        self,
        task: Task,
        records: Sequence[Mapping[str, Any]],
        predictions: Sequence[Prediction],
        name: str,
        repeats: int = 1,
    ) -> AdapterResult:
        contexts = gold = None
        if any(p.sources for p in predictions):
            contexts = [[s.get("text", "") for s in (p.sources or [])] for p in predictions]
            if self.gold_field is not None:
                key, field = self.gold_key, self.gold_field
                gold = [
                    [
                        r.get(field) is not None
                        and (s.get("metadata") or {}).get(key) == r.get(field)
                        for s in (p.sources or [])
                    ]
                    for r, p in zip(records, predictions, strict=True)
                ]
        batch = GenerationBatch(
            [str(r[task.target_field]) for r in records],
            [p.text or "" for p in predictions],
            contexts,
            gold,
        )
        rag = GOLD_RAG_DEFAULTS if gold is not None else RAG_DEFAULTS
        specs = self._specs(GENERATION_DEFAULTS + (rag if contexts else []))
        intervals = bootstrap(
            specs, batch, len(records), self.resamples, self.alpha, self.seed, repeats
        )
        rows = [
            {
                "index": i,
                "reference": r[task.target_field],
                **{f: r[f] for f in task.text_fields},
                **p.to_dict(),
            }
            for i, (r, p) in enumerate(zip(records, predictions, strict=True))
        ]
        return AdapterResult(name, intervals, predictions=rows, batch=batch)

    # ---- retrieval ----------------------------------------------------------------------------

    def retrieval(
        self,
        searchers: Mapping[str, Callable[[str], list[Any]]],
        queries: Sequence[str],
        relevant: Sequence[set[Any]],
        k: int = 10,
        cutoffs: Sequence[int] = (1, 5, 10),
    ) -> Report:
        """Compare retrieval systems: each searcher maps a query to ranked ids."""
        results = []
        for name, search in searchers.items():
            start = time.perf_counter()
            retrieved = [list(search(q))[:k] for q in queries]
            seconds = time.perf_counter() - start
            intervals: dict[str, Interval] = {}
            batch = None
            for cutoff in cutoffs:
                batch = RetrievalBatch(retrieved, [set(r) for r in relevant], cutoff)
                found = bootstrap(
                    [metrics.get("recall_at_k")],
                    batch,
                    len(queries),
                    self.resamples,
                    self.alpha,
                    self.seed,
                )
                intervals[f"recall@{cutoff}"] = found["recall_at_k"]
            batch = RetrievalBatch(retrieved, [set(r) for r in relevant], k)
            found = bootstrap(
                [metrics.get("mrr"), metrics.get("ndcg_at_k")],
                batch,
                len(queries),
                self.resamples,
                self.alpha,
                self.seed,
            )
            intervals["mrr"], intervals[f"ndcg@{k}"] = found["mrr"], found["ndcg_at_k"]
            rows = [
                {"index": i, "query": q, "retrieved": r, "relevant": sorted(map(str, rel))}
                for i, (q, r, rel) in enumerate(zip(queries, retrieved, relevant, strict=True))
            ]
            results.append(
                AdapterResult(
                    name,
                    intervals,
                    predictions=rows,
                    batch=batch,
                    costs={"queries_per_second": len(queries) / max(seconds, 1e-9)},
                )
            )
        report = Report("retrieval", results, [], self._reproducibility(None, []), self.alpha)
        report.comparisons = self._compare_retrieval(results, cutoffs)
        return report

    def _compare_retrieval(
        self, results: list[AdapterResult], cutoffs: Sequence[int] = (1, 5, 10)
    ) -> list[Comparison]:
        """Paired permutation tests between every two retrievers: recall at each cutoff, MRR
        and nDCG, on the same queries."""
        out = []
        for i, a in enumerate(results):
            for b in results[i + 1 :]:
                assert a.batch is not None and b.batch is not None
                k = a.batch.k
                tests: list[tuple[str, Any, Any, str]] = [
                    (
                        f"recall@{c}",
                        RetrievalBatch(a.batch.retrieved, a.batch.relevant, c),
                        RetrievalBatch(b.batch.retrieved, b.batch.relevant, c),
                        "recall_at_k",
                    )
                    for c in cutoffs
                ]
                tests += [
                    ("mrr", a.batch, b.batch, "mrr"),
                    (f"ndcg@{k}", a.batch, b.batch, "ndcg_at_k"),
                ]
                for shown, batch_a, batch_b, metric in tests:
                    spec = metrics.get(metric)
                    p = paired_permutation(
                        spec.values(batch_a), spec.values(batch_b), seed=self.seed
                    )
                    diff = a.metrics[shown].value - b.metrics[shown].value
                    low, high = difference_interval(
                        paired_differences(
                            spec, batch_a, batch_b, len(a.predictions), self.resamples, self.seed
                        ),
                        self.alpha,
                    )
                    out.append(
                        Comparison(
                            a.name,
                            b.name,
                            shown,
                            diff,
                            p,
                            "paired permutation",
                            p < self.alpha,
                            low,
                            high,
                        )
                    )
        return out

    # ---- report -------------------------------------------------------------------------------

    def _report(
        self, task: Task, results: list[AdapterResult], records: Sequence[Mapping[str, Any]]
    ) -> Report:
        comparisons = []
        for i, a in enumerate(results):
            for b in results[i + 1 :]:
                for name in a.metrics:
                    if name not in b.metrics:
                        continue
                    comparisons.append(self._paired(metrics.get(name), a, b))
        return Report(
            task.kind,
            results,
            comparisons,
            self._reproducibility(task, records),
            self.alpha,
            labels=list(task.labels),
        )

    def _paired(self, spec: MetricSpec, a: AdapterResult, b: AdapterResult) -> Comparison:
        n = len(a.predictions)
        difference = a.metrics[spec.name].value - b.metrics[spec.name].value
        repeats = max(a.repeats, b.repeats)
        # the difference's interval comes from paired resamples whatever the test
        resampled = paired_differences(
            spec, a.batch, b.batch, n, self.resamples, self.seed, repeats
        )
        if repeats > 1:  # seeds of one example are not independent: resample examples whole
            test = f"paired bootstrap over examples ({repeats} seeds)"
            p = bootstrap_p_value(resampled)
        elif spec.name == "accuracy":
            test = "McNemar exact"
            p = mcnemar_exact(a.batch.refs == a.batch.preds, b.batch.refs == b.batch.preds)[
                "p_value"
            ]
        elif spec.per_example is not None:
            test = "paired permutation"
            p = paired_permutation(spec.values(a.batch), spec.values(b.batch), seed=self.seed)
        else:
            test = "paired bootstrap"
            p = bootstrap_p_value(resampled)
        low, high = difference_interval(resampled, self.alpha)
        return Comparison(a.name, b.name, spec.name, difference, p, test, p < self.alpha, low, high)

    def _reproducibility(
        self, task: Task | None, records: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        info: dict[str, Any] = {
            "libraries": library_versions(),
            "seed": self.seed,
            "resamples": self.resamples,
            "alpha": self.alpha,
        }
        if task is not None:
            info.update(
                task=task.model_dump(mode="json"),
                template_sha256=task.template_obj.sha256,
                data_sha256=data_hash(records),
                examples=len(records),
            )
        return info


from promptkit.evaluation.report import Report  # noqa: E402  (Report imports nothing from here)

"""Metrics equal scikit-learn's; intervals cover; paired tests equal scipy's; reports render."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from sklearn import metrics as skm

import promptkit as pk
from promptkit.adapters.base import Prediction
from promptkit.evaluation import bootstrap, mcnemar_exact, paired_permutation
from promptkit.metrics import (
    ClassificationBatch,
    GenerationBatch,
    MetricSpec,
    RetrievalBatch,
    metrics,
    register_metric,
    strip_citations,
    token_f1,
)

labels_strategy = st.integers(min_value=2, max_value=5).flatmap(
    lambda k: st.tuples(st.just(k), st.lists(st.tuples(st.integers(0, k - 1),
                                                       st.integers(0, k - 1)),
                                             min_size=1, max_size=60)))


@settings(max_examples=150, deadline=None)
@given(labels_strategy)
def test_classification_metrics_equal_sklearn(data):
    k, pairs = data
    refs = np.array([p[0] for p in pairs])
    preds = np.array([p[1] for p in pairs])
    batch = ClassificationBatch(refs, preds, [f"l{i}" for i in range(k)])
    assert metrics.get("accuracy").compute(batch) == pytest.approx(skm.accuracy_score(refs, preds))
    for which, fn in [("precision", skm.precision_score), ("recall", skm.recall_score),
                      ("f1", skm.f1_score)]:
        for average in ("macro", "micro", "weighted"):
            ours = metrics.get(f"{which}_{average}").compute(batch)
            theirs = fn(refs, preds, average=average, zero_division=0)
            assert ours == pytest.approx(theirs, abs=1e-12), (which, average)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0.01, 0.99)), min_size=2, max_size=80))
def test_score_metrics_equal_sklearn(rows):
    refs = np.array([r[0] for r in rows])
    p1 = np.array([r[1] for r in rows])
    scores = np.stack([1 - p1, p1], axis=1)
    batch = ClassificationBatch(refs, scores.argmax(1), ["a", "b"], scores)
    assert metrics.get("log_loss").compute(batch) == pytest.approx(
        skm.log_loss(refs, scores, labels=[0, 1]), rel=1e-9)
    if len(set(refs)) == 2:
        assert metrics.get("roc_auc").compute(batch) == pytest.approx(
            skm.roc_auc_score(refs, p1), abs=1e-12)


def test_multiclass_auc_and_ece():
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(3), size=200)
    refs = rng.integers(0, 3, 200)
    batch = ClassificationBatch(refs, scores.argmax(1), ["a", "b", "c"], scores)
    assert metrics.get("roc_auc").compute(batch) == pytest.approx(
        skm.roc_auc_score(refs, scores, multi_class="ovr", average="macro"), abs=1e-12)
    confidence, correct = scores.max(1), scores.argmax(1) == refs
    bins = np.minimum((confidence * 15).astype(int), 14)
    expected = sum(abs(confidence[bins == b].mean() - correct[bins == b].mean())
                   * (bins == b).sum() for b in range(15) if (bins == b).any()) / 200
    assert metrics.get("ece").compute(batch) == pytest.approx(expected)


def test_generation_metrics():
    batch = GenerationBatch(["The Eiffel Tower", "Paris"], ["eiffel tower!", "Lyon"],
                            [["The Eiffel tower is in Paris"], ["Lyon is a city"]])
    assert metrics.get("exact_match").compute(batch) == 0.5
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert metrics.get("token_f1").compute(batch) == pytest.approx(0.5)
    assert 0 < metrics.get("rouge_l").compute(batch) <= 1
    import sacrebleu

    assert metrics.get("bleu").compute(batch) == pytest.approx(
        sacrebleu.corpus_bleu(batch.preds, [batch.refs]).score / 100)
    assert metrics.get("context_support").compute(batch) == pytest.approx(0.5)
    assert metrics.get("answer_context_overlap").compute(batch) == pytest.approx(1.0)


def test_gold_passage_metrics_hand_computed():
    from promptkit.errors import ConfigError

    # three answers over three injected passages each; gold marks which passages are gold
    batch = GenerationBatch(["x"] * 3, ["see [2] and [3]", "no citation", "see [1] [9]"],
                            [["a", "b", "c"]] * 3,
                            [[False, True, False], [False, False, False], [True, False, False]])
    assert metrics.get("context_recall").compute(batch) == pytest.approx(2 / 3)
    # [2] gold, [3] not: 0.5; none cited: 0; [1] gold and [9] out of range (ignored): 1
    assert metrics.get("citation_accuracy").compute(batch) == pytest.approx(1.5 / 3)
    with pytest.raises(ConfigError, match="gold_field"):
        metrics.get("context_recall").compute(GenerationBatch(["x"], ["y"], [["a"]]))


def test_answer_metrics_ignore_citation_markers_of_injected_passages():
    cited = GenerationBatch(["use the copy module", "x = [1]"],
                            ["use the copy module [2]", "x = [1] [1]"], [["a", "b"], ["a"]])
    bare = GenerationBatch(["use the copy module", "x = [1]"],
                           ["use the copy module", "x = [1]"], [["a", "b"], ["a"]])
    # the marker after an answer goes; a list literal [1] inside code stays in the first
    assert cited.answers == ["use the copy module", "x = [1]"]
    for name in ("exact_match", "token_f1", "rouge_l", "bleu"):
        assert metrics.get(name).compute(cited) == pytest.approx(metrics.get(name).compute(bare))
    # a closed-book answer (no passages) is read as written
    assert GenerationBatch(["a"], ["a [1]"]).answers == ["a [1]"]
    assert strip_citations("see [3] here [12]", 3) == "see here [12]"


def test_evaluator_scores_rag_against_gold_passages(tiny_bert, tiny_gpt2):
    kb = pk.KnowledgeBase.build(
        [{"text": "boats float down the river", "heading": "river"},
         {"text": "the baker kneads bread", "heading": "bread"}], embedder=tiny_bert)
    base = pk.create_adapter("prompt", model=tiny_gpt2, max_new_tokens=2,
                             task=pk.Task.generation(template="rag_qa"))
    rag = pk.create_adapter("retrieval", base=base, knowledge=kb, top_k=1)
    data = [{"question": "boats?", "answer": "river", "gold": "river"},
            {"question": "bread?", "answer": "baker", "gold": "bread"}]
    predictions = rag.predict(data)
    expected = [p.sources[0]["metadata"]["heading"] == r["gold"]
                for p, r in zip(predictions, data, strict=True)]
    report = pk.Evaluator(rag.task, gold_field="gold", resamples=50).compare({"rag": rag}, data)
    result = report["rag"]
    assert result.metrics["context_recall"].value == pytest.approx(sum(expected) / 2)
    assert {"citation_accuracy", "context_support"} <= set(result.metrics)
    assert any("quality against" in caption for caption, _ in report._plots())


def test_retrieval_metrics_hand_computed():
    batch = RetrievalBatch([["a", "b", "c"], ["x", "y", "z"], ["q", "r", "s"]],
                           [{"b"}, {"x", "z"}, {"none"}], k=3)
    assert metrics.get("hit_rate").compute(batch) == pytest.approx(2 / 3)
    assert metrics.get("mrr").compute(batch) == pytest.approx((1 / 2 + 1) / 3)
    assert metrics.get("recall_at_k").compute(batch) == pytest.approx((1 + 1) / 3)
    assert metrics.get("precision_at_k").compute(batch) == pytest.approx((1 / 3 + 2 / 3) / 3)
    ndcg_first = (1 / np.log2(3)) / 1.0
    ndcg_second = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert metrics.get("ndcg_at_k").compute(batch) == pytest.approx(
        (ndcg_first + ndcg_second) / 3)
    repeated = RetrievalBatch([["b", "b", "b"]], [{"b"}], k=3)  # chunks of one passage
    assert metrics.get("ndcg_at_k").compute(repeated) == pytest.approx(1.0)


def test_interval_coverage_is_nominal():
    """Repeated draws of n=200 from a known p: ~95% of intervals cover it."""
    rng = np.random.default_rng(1)
    p, n, trials = 0.7, 200, 400
    covered = 0
    for trial in range(trials):
        correct = rng.random(n) < p
        batch = ClassificationBatch(np.ones(n, dtype=int), correct.astype(int), ["a", "b"])
        interval = bootstrap([metrics.get("accuracy")], batch, n, resamples=1000,
                             seed=trial)["accuracy"]
        covered += interval.low <= p <= interval.high
    assert 0.93 <= covered / trials <= 0.97, covered / trials


def test_paired_difference_interval_matches_the_normal_approximation():
    """a is right on all 400 examples, b on 300 (a random 300): the difference of accuracies is
    0.25 with standard error sqrt(0.25 * 0.75 / 400) = 0.0217 by the paired normal approximation;
    the bootstrap percentile interval sits there, and clear of zero."""
    from promptkit.evaluation import difference_interval, paired_differences

    n = 400
    refs = np.ones(n, dtype=int)
    b_preds = refs.copy()
    b_preds[np.random.default_rng(0).choice(n, 100, replace=False)] = 0
    a = ClassificationBatch(refs, refs.copy(), ["a", "b"])
    b = ClassificationBatch(refs, b_preds, ["a", "b"])
    draws = paired_differences(metrics.get("accuracy"), a, b, n, resamples=4000, seed=3)
    low, high = difference_interval(draws, alpha=0.05)
    half = 1.96 * (0.25 * 0.75 / n) ** 0.5
    assert low == pytest.approx(0.25 - half, abs=0.01)
    assert high == pytest.approx(0.25 + half, abs=0.01)
    same = paired_differences(metrics.get("accuracy"), a, a, n, resamples=200, seed=3)
    assert difference_interval(same) == (0.0, 0.0)  # a model against itself: no difference


def test_mcnemar_matches_scipy_binomtest():
    a = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0], dtype=bool)
    b = np.array([0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0], dtype=bool)
    ours = mcnemar_exact(a, b)
    assert (ours["a_only"], ours["b_only"]) == (6, 1)
    assert ours["p_value"] == pytest.approx(scipy_stats.binomtest(1, 7, 0.5).pvalue)


def test_paired_permutation_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.random(10), rng.random(10) * 0.8
    ours = paired_permutation(a, b, resamples=2 ** 10)
    theirs = scipy_stats.permutation_test(
        (a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
        n_resamples=np.inf, alternative="two-sided").pvalue
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_200k_predictions_memory_stays_small():
    n = 200_000
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 2, n)
    preds = np.where(rng.random(n) < 0.8, refs, 1 - refs)
    scores = np.stack([1 - preds * 0.8 - 0.1, preds * 0.8 + 0.1], axis=1)
    batch = ClassificationBatch(refs, preds, ["a", "b"], scores)
    specs = [metrics.get(m) for m in ("accuracy", "f1_macro", "precision_macro", "log_loss",
                                      "ece")]
    tracemalloc.start()
    found = bootstrap(specs, batch, n, resamples=200)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert found["accuracy"].low < 0.8 < found["accuracy"].high
    assert peak < 250 * 2 ** 20, f"peak {peak / 2**20:.0f} MiB"


def test_custom_metric_registers_with_one_call():
    spec = register_metric(MetricSpec(
        "always_half", "classification", True,
        per_example=lambda b: np.full(len(b.refs), 0.5)), overwrite=True)
    task = pk.Task.classification(["a", "b"])
    result = pk.Evaluator(task, metrics=["accuracy", "always_half"]).score(
        task, [{"text": "x", "label": "a"}], [Prediction(label="a", scores={"a": 1.0, "b": 0.0})])
    assert result.metrics["always_half"].value == 0.5
    assert spec.name in metrics


def test_compare_report_files(tiny_bert, sentiment_task, toy_data, tmp_path):
    knn = pk.create_adapter("knn", task=sentiment_task, embedder=tiny_bert, top_k=3)
    knn.fit(toy_data[:32])
    wide = pk.create_adapter("knn", task=sentiment_task, embedder=tiny_bert, top_k=15)
    wide.fit(toy_data[:32])
    report = pk.Evaluator(sentiment_task, resamples=200).compare({"k3": knn, "k15": wide},
                                                                 toy_data[32:])
    report.save(tmp_path / "report")
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(saved["results"]) == {"k3", "k15"}
    assert {c["test"] for c in saved["comparisons"]} >= {"McNemar exact"}
    for key in ("libraries", "template_sha256", "data_sha256"):
        assert key in saved["reproducibility"]
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert "Quality against cost, with the Pareto front" in html
    assert saved["pareto_front"] and set(saved["pareto_front"]) <= {"k3", "k15"}
    assert saved["pareto_front"] == report.pareto_front()
    rows = (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 2 * 16
    assert "k3" in report.table() and "McNemar" in report.markdown()
    for c in saved["comparisons"]:  # every difference comes with its paired interval
        assert c["low"] <= c["difference"] <= c["high"], c
        assert f"[{c['low']:+.3f}, {c['high']:+.3f}]" in report.markdown()


def test_pareto_front_keeps_exactly_the_undominated():
    from promptkit.evaluation.tradeoff import pareto_front

    points = {"full": (0.78, 250.0), "int8": (0.77, 480.0), "lora": (0.78, 240.0),
              "knn": (0.72, 180.0), "tie": (0.77, 480.0)}
    assert pareto_front(points) == ["int8", "tie", "full"]  # fastest first; lora, knn dominated


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 5)), min_size=1, max_size=8))
def test_pareto_front_property(pairs):
    from promptkit.evaluation.tradeoff import pareto_front

    points = {f"a{i}": (float(q), float(s)) for i, (q, s) in enumerate(pairs)}
    front = set(pareto_front(points))

    def beats(a, b):
        return a[0] >= b[0] and a[1] >= b[1] and a != b

    for name, point in points.items():
        dominated = any(beats(other, point) for other in points.values())
        assert (name in front) == (not dominated)


def test_compare_over_seeds(tiny_bert, sentiment_task, toy_data):
    from promptkit.testing import toy_classification

    settings = {"model": tiny_bert, "task": sentiment_task, "epochs": 4, "batch_size": 8,
                "learning_rate": 1e-3}
    adapters = {"lora": pk.create_adapter("full", **settings),
                "knn": pk.create_adapter("knn", task=sentiment_task, embedder=tiny_bert)}
    test = toy_classification(40, seed=3)
    evaluator = pk.Evaluator(sentiment_task, resamples=300)
    report = evaluator.compare(adapters, test, seeds=[0, 1, 2], train=toy_data[:24])
    assert not adapters["lora"].fitted_  # the adapters passed in are not changed
    assert report.seed_count() == 3
    lora, knn = report["lora"], report["knn"]
    assert len(lora.predictions) == 3 * len(test) and {r["seed"] for r in lora.predictions} == {0, 1, 2}
    values = [m["accuracy"] for m in lora.seed_metrics]
    scores = {s: [r["scores"]["positive"] for r in lora.predictions if r["seed"] == s]
              for s in (0, 1, 2)}
    assert scores[0] != scores[1] != scores[2], "each seed is its own fit"
    assert lora.metrics["accuracy"].value == pytest.approx(np.mean(values))
    assert len({m["accuracy"] for m in knn.seed_metrics}) == 1  # nothing trains: same each seed
    # intervals resample examples with all their seeds: as wide as one run's, not sqrt(3) less
    single = evaluator.score(sentiment_task, test, knn_predictions(report, test))
    pooled_width = knn.metrics["accuracy"].high - knn.metrics["accuracy"].low
    single_width = single.metrics["accuracy"].high - single.metrics["accuracy"].low
    assert pooled_width == pytest.approx(single_width, rel=0.35)
    assert all("3 seeds" in c.test for c in report.comparisons)
    assert "± " in report.markdown() and "training seeds" in report.html()
    with pytest.raises(pk.errors.ConfigError, match="train="):
        evaluator.compare(adapters, test, seeds=[0, 1])


def knn_predictions(report, test):
    from promptkit.adapters import Prediction

    rows = [r for r in report["knn"].predictions if r["seed"] == 0]
    return [Prediction(label=r["label"], scores=r["scores"]) for r in rows]


def test_retrieval_comparison_tests_every_cutoff():
    queries = [f"q{i}" for i in range(12)]
    relevant = [{f"d{i}"} for i in range(12)]
    # "good" ranks the relevant document first; "late" ranks it third
    good = {q: [f"d{i}", "x", "y"] for i, q in enumerate(queries)}
    late = {q: ["x", "y", f"d{i}"] for i, q in enumerate(queries)}
    report = pk.Evaluator(resamples=50).retrieval(
        {"good": good.__getitem__, "late": late.__getitem__}, queries, relevant, k=3,
        cutoffs=(1, 3))
    found = {c.metric: c for c in report.comparisons}
    assert set(found) == {"recall@1", "recall@3", "mrr", "ndcg@3"}
    assert found["recall@1"].difference == pytest.approx(1.0) and found["recall@1"].significant
    assert found["recall@3"].difference == 0 and not found["recall@3"].significant
    assert found["mrr"].difference == pytest.approx(1 - 1 / 3)

"""An adapted retriever, a trained reranker and tuned fusion on the Python FAQ.

    python benchmarks/retriever_fit.py [--split validation|test] [--out runs/retriever-fit]

Everything trains on the 107 train questions of python_faq's fixed split; fusion weights are
chosen on the validation questions; ``--split`` is where the rows are measured (choose settings
on validation; run test once, at the end). Rows: untuned MiniLM (dense), BM25, hybrid with the
tuned fusion, the adapted MiniLM, its top 20 reordered by the trained reranker blended with the
retriever's score (weight chosen on validation), and by the reranker alone. Recall@1/5/10, MRR and nDCG@10 by section (distinct headings), with 95% intervals and
paired permutation tests; fit seconds of the retriever and the reranker. The report goes to
``--out``; the numbers also to benchmarks/results/retriever_fit_<split>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import promptkit as pk

HERE = Path(__file__).resolve().parent
RETRIEVER = {"epochs": 3, "learning_rate": 2e-5, "batch_size": 16, "hard_negatives": 3,
             "warmup_ratio": 0.1, "max_length": 256, "logging_steps": 50}
RERANKER = {"epochs": 3, "learning_rate": 2e-4, "batch_size": 16, "hard_negatives": 3,
            "warmup_ratio": 0.1, "max_length": 256, "logging_steps": 50}


def build_kb(embedder: str, chunk_tokens: int) -> Any:
    return pk.KnowledgeBase.build(pk.datasets.knowledge_dir("python-faq"), embedder=embedder,
                                  chunking={"max_tokens": chunk_tokens})


def train_and_add(args: Any, kb: Any, pairs: list[dict[str, str]],
                  validation: list[dict[str, Any]], searchers: dict[str, Any], searcher: Any,
                  fitted: dict[str, float]) -> tuple[float, list[dict[str, Any]]]:
    """Fit the retriever and the reranker; add their rows; return the reranker weight (chosen
    on validation) and its grid."""
    out = Path(args.out)
    retriever = pk.create_adapter("full", model="minilm", task=pk.Task.retrieval(),
                                  negatives_from=kb, **RETRIEVER)
    fitted["retriever"] = retriever.fit(pairs).fit_seconds
    retriever.save(out / "retriever")
    reranker = pk.create_adapter("full", model="minilm", task=pk.Task.rerank(),
                                 negatives_from=kb, **RERANKER)
    fitted["reranker"] = reranker.fit(pairs).fit_seconds
    reranker.save(out / "reranker")
    print({k: round(v) for k, v in fitted.items()}, flush=True)
    adapted = build_kb(str(out / "retriever"), args.chunk_tokens)
    weight, weights = pk.knowledge.tune_rerank_weight(
        adapted, reranker, [q["question"] for q in validation],
        [q["passage_id"] for q in validation], candidates=args.candidates, distinct="heading")
    print("reranker weight chosen on validation:", weight, flush=True)
    searchers["adapted"] = searcher(adapted)
    searchers["adapted_reranked"] = searcher(adapted, rerank=reranker,
                                             candidates=args.candidates, rerank_weight=weight)
    searchers["adapted_reranker_alone"] = searcher(adapted, rerank=reranker,
                                                   candidates=args.candidates)
    return weight, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--untrained", action="store_true",
                        help="only the rows that train nothing: dense, BM25, tuned hybrid")
    parser.add_argument("--out", default="runs/retriever-fit")
    args = parser.parse_args()
    out = Path(args.out)
    faq = pk.datasets.load("python_faq")
    kb = build_kb("minilm", args.chunk_tokens)
    pairs = kb.training_pairs(faq["train"])

    validation = faq["validation"]
    fusion, table = pk.knowledge.tune_fusion(
        kb, [q["question"] for q in validation], [q["passage_id"] for q in validation])
    print("fusion chosen on validation:", fusion, flush=True)

    def searcher(base: Any, **options: Any) -> Any:
        def run(query: str) -> list[str]:
            hits = base.search(query, k=10, distinct="heading", **options)
            return [h.metadata.get("heading") for h in hits]
        return run

    searchers = {
        "dense": searcher(kb),
        "bm25": searcher(kb, hybrid={"dense_weight": 0, "sparse_weight": 1}),
        "hybrid_tuned": searcher(kb, hybrid=fusion),
    }
    fitted: dict[str, float] = {}
    weight, weights = None, None
    if not args.untrained:
        weight, weights = train_and_add(args, kb, pairs, validation, searchers, searcher,
                                        fitted)
    questions = faq[args.split]
    report = pk.Evaluator(resamples=1000).retrieval(
        searchers, [q["question"] for q in questions], [{q["passage_id"]} for q in questions],
        k=10)
    report.title = f"Adapted retriever and trained reranker, python_faq {args.split}"
    print(report.table(full=True))
    report.save(out / f"report-{args.split}")
    results = {r.name: {m: v.to_dict() for m, v in r.metrics.items()} for r in report.results}
    tests = [c.to_dict() for c in report.comparisons]
    payload = {"split": args.split, "fit_seconds": fitted, "fusion": fusion.to_dict(),
               "fusion_grid_validation": table,
               "rerank_weight": weight, "rerank_weight_grid_validation": weights,
               "results": results, "paired_tests": tests,
               "retriever": RETRIEVER, "reranker": RERANKER, "chunk_tokens": args.chunk_tokens}
    (HERE / "results" / f"retriever_fit_{args.split}.json").write_text(
        json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()

"""Knowledge that pays, on the Python FAQ: what each way of using the knowledge base adds.

    python examples/knowledge_pays.py [--split test] [--out runs/demo/python_faq_knowledge]

On the fixed python_faq split (train questions for fitting, 35 test questions), with MiniLM and
SmolLM2-135M-Instruct, it compares in one report:

- closed_book: SmolLM2 prompted with the question alone;
- zero_shot_rag: the same model given the top passages of the FAQ knowledge base;
- lora_closed: LoRA fine-tuned on the training questions, closed-book;
- lora_rag: LoRA fine-tuned on each training question with its retrieved passages (RAFT-style:
  the gold passage kept with probability 0.8);
- lora_rag_adapted: the same reader, with passages from a MiniLM adapted to the FAQ questions and
  reordered by a cross-encoder trained on them (its weight against the retriever's score chosen
  on the validation questions).

The report (token F1, ROUGE-L, context recall, citation accuracy, with intervals, paired tests,
and a plot of answer quality against retrieval recall) goes to ``--out``, with a second table of
the three retrievers' recall. ``make demo`` runs it with ``--demo`` (one epoch, one hard
negative, reranking the top 10) to keep within its time; the default (3 epochs) is the full-size run, as are benchmarks/rag_fit.py (readers on validation
or test) and benchmarks/retriever_fit.py (retrievers, fusion and reranking).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import FAST, causal_lm, encoder

import promptkit as pk
from promptkit.evaluation.combined import write_combined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument(
        "--epochs",
        type=float,
        default=3,
        help="passes of the LoRA readers over the training questions (--demo: 1)",
    )
    parser.add_argument(
        "--pair-epochs",
        type=float,
        default=3,
        help="passes of the retriever and the reranker over the training "
        "question-passage pairs (--demo: 1)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="the size make demo runs: one epoch for every fit, one mined hard negative per "
        "training question, reranking of the top 10 (about 10 minutes on 2 cores, not 30)",
    )
    parser.add_argument("--out", default="runs/demo/python_faq_knowledge")
    args = parser.parse_args()
    negatives, candidates = 3, 20
    if args.demo:
        args.epochs = args.pair_epochs = 1
        negatives, candidates = 1, 10
    out = Path(args.out)
    started = time.perf_counter()
    faq = pk.datasets.load("python_faq")
    if FAST:  # the test suite: tiny models, a few questions
        faq = {
            "train": faq["train"][:16],
            "validation": faq["validation"][:4],
            "test": faq["test"][:4],
        }
        args.epochs = args.pair_epochs = 1
    reader, embedder = causal_lm(), encoder()
    source = pk.datasets.knowledge_dir("python-faq")
    chunking = {"max_tokens": 128}  # three passages and a question fit SmolLM2's budget
    kb = pk.KnowledgeBase.build(source, embedder=embedder, chunking=chunking)

    print("== adapting the retriever and training a reranker on the training questions")
    pairs = kb.training_pairs(faq["train"])
    pair_settings = {
        "model": embedder,
        "negatives_embedder": embedder,
        "negatives_from": kb,
        "hard_negatives": negatives,
        "batch_size": 16,
        "learning_rate": 2e-5,
        "warmup_ratio": 0.1,
        "max_length": 256,
        "logging_steps": 50,
    }
    retriever = pk.create_adapter(
        "full", task=pk.Task.retrieval(), epochs=args.pair_epochs, **pair_settings
    )
    print(f"   retriever fit in {retriever.fit(pairs).fit_seconds:.0f} s")
    retriever.save(out / "retriever")
    reranker = pk.create_adapter(
        "full",
        task=pk.Task.rerank(),
        epochs=args.pair_epochs,
        **{**pair_settings, "learning_rate": 2e-4},
    )
    print(f"   reranker fit in {reranker.fit(pairs).fit_seconds:.0f} s")
    adapted = pk.KnowledgeBase.build(source, embedder=str(out / "retriever"), chunking=chunking)
    validation = faq["validation"]  # the reranker's weight is chosen here, never on test
    weight, _ = pk.knowledge.tune_rerank_weight(
        adapted,
        reranker,
        [q["question"] for q in validation],
        [q["passage_id"] for q in validation],
        candidates=candidates,
        distinct="heading",
    )
    print(f"   reranker weight chosen on validation: {weight}")

    closed_task = pk.Task.generation(template="closed_book_qa")
    rag_task = pk.Task.generation(template="rag_qa", prompt_fields=["question"])
    # tiny GPT-2 reads 128 positions: passages are dropped to fit (the drop list), not the point
    generation = {
        "max_new_tokens": 8 if FAST else 48,
        "batch_size": 8,
        "max_length": 128 if FAST else 448,
    }
    # LoRA r16 on every linear layer: 0.610 validation token F1 against 0.362 for r8 on q/v
    # alone (benchmarks/rag_fit.py); the same settings for the closed-book reader
    training = {
        "model": reader,
        "epochs": args.epochs,
        "learning_rate": 1e-3,
        "r": 16,
        "alpha": 32,
        "target_modules": "all-linear",
        "warmup_ratio": 0.1,
        "logging_steps": 50,
        "save_checkpoints": False,
        **generation,
    }
    retrieval = {"knowledge": kb, "top_k": 3, "distinct": "heading"}
    adapters = {
        "closed_book": pk.create_adapter("prompt", model=reader, task=closed_task, **generation),
        "zero_shot_rag": pk.create_adapter(
            "retrieval",
            base=pk.create_adapter("prompt", model=reader, task=rag_task, **generation),
            **retrieval,
        ),
        "lora_closed": pk.create_adapter("lora", task=closed_task, **training),
        "lora_rag": pk.create_adapter(
            "retrieval",
            base=pk.create_adapter("lora", task=rag_task, **training),
            gold_field="passage_id",
            gold_key="heading",
            **retrieval,
        ),
    }
    for name, adapter in adapters.items():
        if adapter.learns:
            print(f"== fitting {name}")
            print(f"   {name} fit in {adapter.fit(faq['train']).fit_seconds:.0f} s")
    # the reader trained with the untuned retriever, now fed by the adapted one and the reranker
    adapters["lora_rag_adapted"] = pk.create_adapter(
        "retrieval",
        base=adapters["lora_rag"].base_,
        knowledge=adapted,
        top_k=3,
        distinct="heading",
        rerank=reranker,
        candidates=candidates,
        rerank_weight=weight,
    )

    questions = faq[args.split]
    evaluator = pk.Evaluator(rag_task, metrics=None, gold_field="passage_id", gold_key="heading")
    report = evaluator.compare(adapters, questions)
    report.title = f"Knowledge that pays — python_faq {args.split} ({len(questions)} questions)"
    print(report.table(full=True))

    def searcher(base: pk.KnowledgeBase, **options: object):
        return lambda q: [
            h.metadata.get("heading") for h in base.search(q, k=10, distinct="heading", **options)
        ]

    retrievers = pk.Evaluator().retrieval(
        {
            "minilm": searcher(kb),
            "adapted": searcher(adapted),
            "adapted_reranked": searcher(
                adapted, rerank=reranker, candidates=candidates, rerank_weight=weight
            ),
        },
        [q["question"] for q in questions],
        [{q["passage_id"]} for q in questions],
    )
    retrievers.title = f"Retrievers on the same {len(questions)} questions (by FAQ section)"
    print(retrievers.table())
    wall = f"Wall time {time.perf_counter() - started:.0f} s on this machine."
    write_combined([report, retrievers], out, report.title, notes=[wall])
    print(f"Report written to {out}/report.html")


if __name__ == "__main__":
    main()

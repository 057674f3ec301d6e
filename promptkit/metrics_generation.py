"""Generation and RAG metrics: answer overlap (exact match, token F1, ROUGE-L, BLEU) and how an
answer relates to the passages it was given (context recall, citation accuracy, support).

Registered by :mod:`promptkit.metrics`; this module imports nothing from it at import time, so
either may be imported first.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from promptkit.metrics import GenerationBatch

CITATION = re.compile(r"\[(\d{1,3})\]")


def strip_citations(text: str, passages: int) -> str:
    """``text`` without the markers [1] … [passages] and the space before each. A marker that
    opens the text or follows ``= ( [ {`` is code (``x = [1]``), not a citation, and stays."""

    def drop(match: re.Match[str]) -> str:
        before = text[: match.start()].rstrip()
        code = not before or before[-1] in "=([{"
        return match.group(0) if code or not 1 <= int(match.group(1)) <= passages else ""

    return re.sub(r"\s*\[(\d{1,3})\]", drop, text).strip()


# ---- answers -------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, squeeze spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(reference: str, prediction: str) -> float:
    ref, pred = normalize_answer(reference).split(), normalize_answer(prediction).split()
    if not ref or not pred:
        return float(ref == pred)
    common = sum((Counter(ref) & Counter(pred)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _exact_match(batch: GenerationBatch) -> np.ndarray:
    return np.array(
        [
            float(normalize_answer(r) == normalize_answer(p))
            for r, p in zip(batch.refs, batch.answers, strict=True)
        ]
    )


def _token_f1(batch: GenerationBatch) -> np.ndarray:
    return np.array([token_f1(r, p) for r, p in zip(batch.refs, batch.answers, strict=True)])


def _rouge_l(batch: GenerationBatch) -> np.ndarray:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array(
        [
            scorer.score(r, p)["rougeL"].fmeasure
            for r, p in zip(batch.refs, batch.answers, strict=True)
        ]
    )


def _bleu_stats(batch: GenerationBatch) -> np.ndarray:
    from sacrebleu.metrics import BLEU

    rows = BLEU()._extract_corpus_statistics(batch.answers, [list(batch.refs)])
    return np.asarray(rows, dtype=np.float64)


def _bleu_from_stats(sums: np.ndarray, batch: Any) -> np.ndarray:
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    return np.array(
        [bleu._compute_score_from_stats([int(x) for x in row]).score / 100.0 for row in sums]
    )


def _support(answer: str, contexts: list[str]) -> float:
    words = normalize_answer(answer).split()
    if not words:
        return 0.0
    context = set(normalize_answer(" ".join(contexts)).split())
    return sum(w in context for w in words) / len(words)


def _context_support(batch: GenerationBatch) -> np.ndarray:
    contexts = batch.contexts or [[] for _ in batch.refs]
    return np.array([_support(r, c) for r, c in zip(batch.refs, contexts, strict=True)])


def _gold(batch: GenerationBatch, metric: str) -> list[list[bool]]:
    if batch.gold is None:
        from promptkit.errors import ConfigError

        raise ConfigError(
            f"{metric} needs to know each question's gold passage: pass gold_field=<the record "
            "field naming it> (and gold_key=<the passage metadata it matches>) to Evaluator."
        )
    return batch.gold


def _context_recall(batch: GenerationBatch) -> np.ndarray:
    return np.array([float(any(g)) for g in _gold(batch, "context_recall")])


def _citation_accuracy(batch: GenerationBatch) -> np.ndarray:
    values = []
    for pred, gold in zip(batch.preds, _gold(batch, "citation_accuracy"), strict=True):
        cited = {int(n) for n in CITATION.findall(pred) if 1 <= int(n) <= len(gold)}
        values.append(sum(gold[n - 1] for n in cited) / len(cited) if cited else 0.0)
    return np.array(values, dtype=np.float64)


def _answer_context_overlap(batch: GenerationBatch) -> np.ndarray:
    contexts = batch.contexts or [[] for _ in batch.preds]
    return np.array([_support(p, c) for p, c in zip(batch.answers, contexts, strict=True)])


def register_generation(register_metric: Any, MetricSpec: Any) -> None:
    """Register the generation and RAG metrics (called by promptkit.metrics)."""
    register_metric(
        MetricSpec(
            "exact_match",
            "generation",
            True,
            per_example=_exact_match,
            description="Normalized answer equals the reference (SQuAD).",
        )
    )
    register_metric(
        MetricSpec(
            "token_f1",
            "generation",
            True,
            per_example=_token_f1,
            description="Token-overlap F1 after SQuAD normalization.",
        )
    )
    register_metric(
        MetricSpec(
            "rouge_l",
            "generation",
            True,
            per_example=_rouge_l,
            description="ROUGE-L F-measure (rouge-score), mean over examples.",
        )
    )
    register_metric(
        MetricSpec(
            "bleu",
            "generation",
            True,
            stats=_bleu_stats,
            from_stats=_bleu_from_stats,
            description="Corpus BLEU (sacrebleu), scaled to 0-1.",
        )
    )
    register_metric(
        MetricSpec(
            "context_recall",
            "rag",
            True,
            per_example=_context_recall,
            description="A gold passage is among those injected (needs the evaluator's "
            "gold_field).",
        )
    )
    register_metric(
        MetricSpec(
            "citation_accuracy",
            "rag",
            True,
            per_example=_citation_accuracy,
            description="Share of the passages an answer cites as [n] that are gold ones; an "
            "answer that cites none scores 0 (needs the evaluator's gold_field).",
        )
    )
    register_metric(
        MetricSpec(
            "context_support",
            "rag",
            True,
            per_example=_context_support,
            description="Share of reference-answer words found in the injected passages.",
        )
    )
    register_metric(
        MetricSpec(
            "answer_context_overlap",
            "rag",
            True,
            per_example=_answer_context_overlap,
            description="Share of predicted-answer words found in the retrieved passages.",
        )
    )

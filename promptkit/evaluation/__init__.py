"""Evaluation: metrics with bootstrap intervals, paired significance tests, reports."""

from promptkit.evaluation.evaluator import Evaluator
from promptkit.evaluation.report import Report
from promptkit.evaluation.results import AdapterResult, Comparison
from promptkit.evaluation.stats import (
    Interval,
    bootstrap,
    difference_interval,
    mcnemar_exact,
    paired_bootstrap,
    paired_differences,
    paired_permutation,
)

__all__ = [
    "AdapterResult",
    "Comparison",
    "Evaluator",
    "Interval",
    "Report",
    "bootstrap",
    "difference_interval",
    "mcnemar_exact",
    "paired_bootstrap",
    "paired_differences",
    "paired_permutation",
]

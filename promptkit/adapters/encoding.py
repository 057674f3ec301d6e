"""Turning validated records into token ids — one place for every model-backed adapter.

The task's template renders each record; the template's truncatable field is cut to fit
``max_length`` (never the instruction), and one warning per call reports how much was cut.
"""

from __future__ import annotations

from typing import Any

from promptkit.task import Task
from promptkit.templates import TruncationStats


def render_inputs(
    task: Task,
    records: list[dict[str, Any]],
    tokenizer: Any,
    max_length: int,
    reserve: int = 0,
    **extra: Any,
) -> list[str]:
    """Rendered prompts that fit in ``max_length - reserve`` tokens."""
    template = task.template_obj
    stats = TruncationStats()
    budget = max(max_length - reserve, 1)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])

    texts = [
        template.render_fitted(record, count, budget, stats, labels=task.labels, **extra)
        for record in records
    ]
    stats.warn(template.name, budget)
    return texts


def length_sorted(items: list[Any], key: Any) -> list[int]:
    """Indices that sort ``items`` by length, longest first (less padding per batch)."""
    return sorted(range(len(items)), key=lambda i: -key(items[i]))

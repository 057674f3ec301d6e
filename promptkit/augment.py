"""Text augmenters for training data: ``augment="word_dropout"`` in a training config.

An augmenter maps ``(text, rng)`` to a new text. Register your own with
``augmenters.register("name", function)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from promptkit.registry import Registry

Augmenter = Callable[[str, random.Random], str]
augmenters: Registry[Augmenter] = Registry("augmenter")


def word_dropout(text: str, rng: random.Random, rate: float = 0.1) -> str:
    """Drop each word with probability ``rate`` (never all of them)."""
    words = text.split()
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept or words[:1])


def random_swap(text: str, rng: random.Random, swaps: int = 1) -> str:
    """Swap ``swaps`` random pairs of words (EDA's random swap, Wei & Zou 2019)."""
    words = text.split()
    for _ in range(swaps if len(words) > 1 else 0):
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


augmenters.register("word_dropout", word_dropout)
augmenters.register("random_swap", random_swap)

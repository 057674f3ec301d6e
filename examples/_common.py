"""Shared by the examples: real models and data by default; tiny ones when
PROMPTKIT_EXAMPLES_FAST=1 (how the test suite runs every example in seconds)."""

from __future__ import annotations

import os

import promptkit as pk

FAST = os.environ.get("PROMPTKIT_EXAMPLES_FAST") == "1"


def encoder() -> str:
    """A sentence encoder: MiniLM, or a tiny random BERT in fast mode."""
    return pk.testing.tiny_model("bert") if FAST else "minilm"


def causal_lm() -> str:
    """A causal LM: SmolLM2-135M-Instruct, or a tiny random GPT-2 in fast mode."""
    return pk.testing.tiny_model("gpt2") if FAST else "smollm2-135m-instruct"


def sentiment_data(train: int = 1000, test: int = 200) -> tuple[list[dict], list[dict]]:
    """Rotten Tomatoes (subsampled), or a separable toy set in fast mode."""
    if FAST:
        return pk.testing.toy_classification(48), pk.testing.toy_classification(12, seed=1)
    data = pk.datasets.load("rotten_tomatoes")
    return data["train"][:train], data["test"][:test]

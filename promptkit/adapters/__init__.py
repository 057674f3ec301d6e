"""Adapters by registry name. Adding a method: a config model, an implementation, one register."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptkit.adapters.base import Adapter, AdapterConfig, FitResult, Prediction
from promptkit.registry import Registry

adapters: Registry[type[Adapter]] = Registry("adapter")

adapters.register("prompt", lazy="promptkit.adapters.prompt:PromptAdapter")
adapters.register("full", lazy="promptkit.adapters.finetune:FullFineTune")
adapters.register("lora", lazy="promptkit.adapters.peft_methods:LoraAdapter")
adapters.register("prompt_tuning", lazy="promptkit.adapters.peft_methods:PromptTuningAdapter")
adapters.register("prefix_tuning", lazy="promptkit.adapters.peft_methods:PrefixTuningAdapter")
adapters.register("p_tuning", lazy="promptkit.adapters.peft_methods:PTuningAdapter")
adapters.register("ia3", lazy="promptkit.adapters.peft_methods:IA3Adapter")
adapters.register("retrieval", lazy="promptkit.adapters.retrieval:RetrievalAdapter")
adapters.register("knn", lazy="promptkit.adapters.knn:KnnAdapter")
adapters.register("distill", lazy="promptkit.adapters.distill:DistillAdapter")


def create_adapter(name: str, **settings: Any) -> Adapter:
    """Build an adapter by registry name, e.g. ``create_adapter("lora", model="minilm", task=t)``.

    Settings are validated by the adapter's config model; a bad one raises ConfigError naming it.
    """
    return adapters.get(name).create(**settings)


def load_adapter(path: str | Path) -> Adapter:
    """Load any saved adapter; its kind is read from the artifact's manifest."""
    return Adapter.load(path)


__all__ = [
    "Adapter",
    "AdapterConfig",
    "FitResult",
    "Prediction",
    "adapters",
    "create_adapter",
    "load_adapter",
]

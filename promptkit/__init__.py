"""promptkit: adapt Hugging Face models by fine-tuning, PEFT or retrieval, and measure which wins.

Heavy libraries (torch, transformers, faiss, sentence-transformers) load on first use, so
``import promptkit`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from promptkit._version import __version__

_EXPORTS = {
    "Task": "promptkit.task",
    "Template": "promptkit.templates",
    "load_template": "promptkit.templates",
    "Adapter": "promptkit.adapters",
    "Prediction": "promptkit.adapters",
    "FitResult": "promptkit.adapters",
    "create_adapter": "promptkit.adapters",
    "load_adapter": "promptkit.adapters",
    "KnowledgeBase": "promptkit.knowledge",
    "Evaluator": "promptkit.evaluation",
    "Report": "promptkit.evaluation",
    "Registry": "promptkit.registry",
}
_MODULES = {
    "datasets",
    "models",
    "errors",
    "metrics",
    "testing",
    "templates",
    "knowledge",
    "evaluation",
    "artifacts",
}

if TYPE_CHECKING:
    from promptkit import datasets, errors, models
    from promptkit.adapters import Adapter, FitResult, Prediction, create_adapter, load_adapter
    from promptkit.evaluation import Evaluator, Report
    from promptkit.knowledge import KnowledgeBase
    from promptkit.registry import Registry
    from promptkit.task import Task
    from promptkit.templates import Template, load_template


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        module = importlib.import_module(f"promptkit.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'promptkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_EXPORTS, *_MODULES, "__version__"])


__all__ = [
    "Adapter",
    "Evaluator",
    "FitResult",
    "KnowledgeBase",
    "Prediction",
    "Registry",
    "Report",
    "Task",
    "Template",
    "__version__",
    "create_adapter",
    "datasets",
    "errors",
    "load_adapter",
    "load_template",
    "models",
]

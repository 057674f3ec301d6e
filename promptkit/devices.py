"""Where a model runs and in which precision: one ``device`` and one ``dtype`` setting.

``device="auto"`` is CUDA when present (under torchrun, the process's ``LOCAL_RANK`` GPU), else
the CPU; ``dtype="auto"`` is float32, which gives the
same predictions on every device. Every batch is moved to the model's device (``to_device``), so a
model that ``Trainer`` or ``torchrun`` put on a GPU is fed there.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(setting: str = "auto") -> Any:
    """The ``torch.device`` for a setting; asking for CUDA without one is an error."""
    import torch

    from promptkit.errors import ConfigError

    if setting == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local_rank = os.environ.get("LOCAL_RANK")  # under torchrun: this process's own GPU
        return torch.device(f"cuda:{local_rank}" if local_rank is not None else "cuda")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device={setting!r} but this machine has no CUDA device (torch "
            f"{torch.__version__}). Use device='auto' or 'cpu'."
        )
    return torch.device(setting)


def resolve_dtype(setting: str = "auto") -> Any:
    import torch

    return torch.float32 if setting == "auto" else getattr(torch, setting)


def to_device(batch: Any, device: Any) -> Any:
    """A batch (a tensor, a mapping of tensors, or a ``BatchEncoding``) on ``device``."""
    if hasattr(batch, "to") and not isinstance(batch, dict):
        return batch.to(device)
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def model_device(model: Any) -> Any:
    """The device of a model's first parameter (``Trainer`` and ``torchrun`` may move it)."""
    import torch

    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")

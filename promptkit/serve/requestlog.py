"""The request/response log: JSON lines, rotated by size, sampled, inputs optionally hashed.

Each line is one input and what the model answered::

    {"time": 1764451200.1, "model": "full", "endpoint": "predict", "input": "a fine film",
     "label": "positive", "confidence": 0.93, "latency_ms": 12.5}

With ``hash_inputs`` the input is replaced by its sha256 (``"input_sha256"``), so a log can be
kept where the text may not; such a log still drives the label and confidence drift tests.
A log of plain inputs can be relabelled into an evaluation set (:func:`read_log`), and
``promptkit monitor LOG --reference RUN_DIR`` runs the drift tests on it offline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class RequestLog:
    def __init__(
        self,
        path: str | Path,
        sample: float = 1.0,
        hash_inputs: bool = False,
        max_bytes: int = 50_000_000,
        backups: int = 5,
        seed: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sample, self.hash_inputs = sample, hash_inputs
        self._random = random.Random(seed)
        self._logger = logging.getLogger(f"promptkit.requests.{self.path.resolve()}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if not self._logger.handlers:
            handler = logging.handlers.RotatingFileHandler(
                self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(handler)

    def write(
        self, model: str, endpoint: str, text: str, output: dict[str, Any], latency_ms: float
    ) -> None:
        if self.sample < 1 and self._random.random() >= self.sample:
            return
        entry: dict[str, Any] = {
            "time": round(time.time(), 3),
            "model": model,
            "endpoint": endpoint,
        }
        if self.hash_inputs:
            entry["input_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        else:
            entry["input"] = text
        entry.update(output)
        entry["latency_ms"] = round(latency_ms, 2)
        self._logger.info(json.dumps(entry, ensure_ascii=False, default=str))

    def close(self) -> None:
        for handler in list(self._logger.handlers):
            handler.close()
            self._logger.removeHandler(handler)


def read_log(path: str | Path, model: str | None = None) -> Iterator[dict[str, Any]]:
    """Entries of a log file (and its rotated predecessors, oldest first), optionally for one
    model; lines that are not JSON are skipped."""
    base = Path(path)
    files = sorted(
        base.parent.glob(base.name + ".*"),
        key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
    )
    for file in [*(f for f in files if f.suffix[1:].isdigit()), base]:
        if not file.is_file():
            continue
        with open(file, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if model is None or entry.get("model") == model:
                    yield entry

"""Serving saved adapters and knowledge bases: ``promptkit serve`` (FastAPI + uvicorn).

OpenAI-compatible endpoints (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``,
``/v1/embeddings``), ``/predict`` for classifiers, ``/v1/search`` for knowledge bases, dynamic
batching, Prometheus metrics at ``/metrics`` and drift monitoring at ``/monitor``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from promptkit.serve.app import ServeConfig, create_app, discover

__all__ = ["ServeConfig", "create_app", "discover", "serve"]

SPEC_ENV = "PROMPTKIT_SERVE_SPEC"


def from_environment() -> Any:
    """The app of each worker process when ``workers > 1`` (uvicorn imports this factory)."""
    spec = json.loads(os.environ[SPEC_ENV])
    return create_app(spec["models"], spec["knowledge"], ServeConfig.model_validate(spec["config"]))


def serve(
    models: dict[str, str | Path],
    knowledge: dict[str, str | Path] | None = None,
    config: ServeConfig | None = None,
) -> None:
    """Run the server until SIGTERM/SIGINT; in-flight requests complete before it exits."""
    import uvicorn

    config = config or ServeConfig.model_validate({})
    knowledge = knowledge or {}
    settings: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "log_level": "warning",
        "timeout_graceful_shutdown": 60,
        "access_log": False,  # requests are counted in /metrics and the request log
    }
    if config.workers == 1:
        uvicorn.run(create_app(models, knowledge, config), **settings)
        return
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="promptkit-prom-"))
    os.environ[SPEC_ENV] = json.dumps(
        {
            "models": {k: str(v) for k, v in models.items()},
            "knowledge": {k: str(v) for k, v in knowledge.items()},
            "config": config.model_dump(),
        }
    )
    uvicorn.run(
        "promptkit.serve:from_environment", factory=True, workers=config.workers, **settings
    )

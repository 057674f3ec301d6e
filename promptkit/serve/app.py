"""The HTTP server: saved adapters and knowledge bases behind OpenAI-compatible endpoints.

``create_app({"name": RUN_DIR}, {"kb": KB_DIR}, ServeConfig(...))`` returns a FastAPI app;
``promptkit serve`` runs it with uvicorn. A request picks a model by ``model``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from promptkit.config import StrictModel
from promptkit.errors import PromptkitError
from promptkit.monitoring import DriftWindow, WindowSnapshot, input_text, sketch
from promptkit.serve.batching import Batcher, QueueFull
from promptkit.serve.metrics import Metrics
from promptkit.serve.requestlog import RequestLog

log = logging.getLogger(__name__)
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/monitor", "/monitor.html"}


class ServeConfig(StrictModel):
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the server.")
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="Server processes (metrics are aggregated).")
    threads: int | None = Field(
        None,
        ge=1,
        description="Model threads per worker; unset, the machine's cores shared among the "
        "workers (two workers with two threads each would fight over two cores).",
    )
    batching: bool = Field(True, description="Group concurrent requests into batches.")
    lanes: int = Field(
        1,
        ge=1,
        description="Batches computed at once, each on its own thread with threads / lanes "
        "model threads.",
    )
    max_batch_size: int = Field(32, ge=1)
    max_wait_ms: float = Field(10.0, ge=0, description="Longest a request waits for company.")
    max_queue: int = Field(512, ge=1, description="Inputs waiting per model before 503s.")
    max_body_bytes: int = Field(2_000_000, ge=1_000)
    max_input_chars: int = Field(20_000, ge=1)
    max_inputs: int = Field(256, ge=1, description="Inputs in one request.")
    api_key_env: str = Field(
        "PROMPTKIT_API_KEY",
        description="Environment variable holding the bearer key; when it "
        "is set, every model endpoint requires it.",
    )
    log: str | None = Field(None, description="Request/response log (JSON lines).")
    log_sample: float = Field(1.0, ge=0, le=1)
    log_hash_inputs: bool = False
    monitor_window: int = Field(200, ge=10)
    monitor_every: int = Field(100, ge=1)
    monitor_alpha: float = Field(0.05, gt=0, lt=1)


class RequestError(Exception):
    """A client error: answered with ``status`` and a one-line message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class Served:
    name: str
    adapter: Any
    kind: str
    batcher: Batcher
    window: DriftWindow
    path: str


def discover(paths: list[str | Path], names: list[str] | None = None) -> dict[str, Path]:
    """Adapter folders by model name: each path is an adapter, or a run folder whose
    sub-folders (to two levels) hold adapters; ``names`` renames the given paths in order."""
    found: dict[str, Path] = {}
    for number, raw in enumerate(paths):
        path = Path(raw)
        candidates = (
            [path]
            if _is_adapter(path)
            else sorted(
                p.parent
                for p in [*path.glob("*/manifest.json"), *path.glob("*/*/manifest.json")]
                if _is_adapter(p.parent)
            )
        )
        if not candidates:
            raise PromptkitError(
                f"No saved adapter in {path}: give a folder written by "
                "adapter.save() (or a run with save_adapters: true)."
            )
        for candidate in candidates:
            name = (
                names[number]
                if names and number < len(names) and len(candidates) == 1
                else candidate.name
            )
            if name in found:
                raise PromptkitError(f"Two models are named {name!r}: rename one with --name.")
            found[name] = candidate
    return found


def _is_adapter(path: Path) -> bool:
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        kind = json.loads(manifest.read_text()).get("kind")
    except (OSError, json.JSONDecodeError):
        return False
    from promptkit.adapters import adapters

    return kind in adapters


class Server:
    """The models, knowledge bases, batchers, metrics and monitors of one server process."""

    def __init__(
        self, models: dict[str, Any], knowledge: dict[str, Any], config: ServeConfig
    ) -> None:
        from promptkit.adapters import load_adapter
        from promptkit.knowledge import KnowledgeBase

        self.config = config
        # numpy's BLAS (the drift tests) on one thread: its idle threads spin on the cores the
        # model's threads need (measured: 127 -> 144 requests/s under load on 2 cores)
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
        if config.threads or config.workers > 1 or config.lanes > 1:
            import torch

            threads = config.threads or max(1, torch.get_num_threads() // config.workers)
            torch.set_num_threads(max(1, threads // (config.lanes if config.batching else 1)))
        self.metrics = Metrics()
        self.log = (
            RequestLog(config.log, config.log_sample, config.log_hash_inputs)
            if config.log
            else None
        )
        self.models: dict[str, Served] = {}
        for name, source in models.items():
            adapter = load_adapter(source) if isinstance(source, (str, Path)) else source
            kind = adapter.task.kind
            if kind not in ("classification", "generation"):
                raise PromptkitError(
                    f"Model {name!r} is a {kind} adapter: serve its knowledge "
                    "base with --kb, or the adapter that uses it."
                )
            batching = config.batching
            batcher = Batcher(
                self._runner(adapter),
                self._length(adapter),
                config.max_batch_size if batching else 1,
                config.max_wait_ms if batching else 0,
                config.max_queue,
                on_batch=self.metrics.batch_size.labels(name).observe,
                packs=bool(getattr(adapter, "packs_inputs", False)),
                lanes=config.lanes if batching else 1,
            )
            window = DriftWindow(
                adapter.profile_, config.monitor_window, config.monitor_every, config.monitor_alpha
            )
            self.models[name] = Served(name, adapter, kind, batcher, window, str(source))
        if any(served.window.profile is not None for served in self.models.values()):
            # the input sketches' first call imports scikit-learn (about 0.8 s of CPU): pay it
            # before the server is ready, not in the middle of its first load
            sketch(["warm up"])
        self.knowledge = {
            name: kb if not isinstance(kb, (str, Path)) else KnowledgeBase.load(kb)
            for name, kb in knowledge.items()
        }
        self.api_key = os.environ.get(config.api_key_env) or None
        self.draining = False
        self.started = time.time()
        self.drift_tests: set[asyncio.Task[None]] = set()  # running; held until done

    @staticmethod
    def _runner(adapter: Any) -> Any:
        def run(records: list[dict[str, Any]]) -> list[Any]:
            return adapter._predict(records)

        return run

    @staticmethod
    def _length(adapter: Any) -> Any:
        fields = list(adapter.task.text_fields)

        def length(record: dict[str, Any]) -> int:
            return len(input_text(record, fields))

        return length

    def model(self, name: Any, kind: str | None = None) -> Served:
        if not isinstance(name, str) or name not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise RequestError(
                404, f"Unknown model {name!r}; served models: {known}.", "model_not_found"
            )
        served = self.models[name]
        if kind is not None and served.kind != kind:
            other = "/predict" if served.kind == "classification" else "/v1/completions"
            raise RequestError(400, f"Model {name!r} is a {served.kind} adapter: use {other}.")
        return served

    def records(self, served: Served, inputs: Any) -> list[dict[str, Any]]:
        """Request inputs as the adapter's records, with the size limits applied."""
        items = inputs if isinstance(inputs, list) else [inputs]
        if not items:
            raise RequestError(400, "No input given.")
        if len(items) > self.config.max_inputs:
            raise RequestError(
                413, f"{len(items)} inputs in one request; the limit is {self.config.max_inputs}."
            )
        fields = list(served.adapter.task.text_fields) or ["text"]
        out = []
        for item in items:
            if isinstance(item, str):
                record = {fields[0]: item}
            elif isinstance(item, dict) and all(isinstance(item.get(f), str) for f in fields):
                record = {f: item[f] for f in fields}
            else:
                raise RequestError(
                    400, f"Each input must be a string or an object with string fields {fields}."
                )
            if sum(len(v) for v in record.values()) > self.config.max_input_chars:
                raise RequestError(
                    413, f"An input is longer than {self.config.max_input_chars} characters."
                )
            out.append(record)
        return out

    async def predict(
        self, served: Served, records: list[dict[str, Any]], endpoint: str, started: float
    ) -> list[Any]:
        if self.draining:
            raise RequestError(503, "The server is shutting down.", "unavailable")
        queue = self.metrics.queue.labels(served.name)
        try:
            queue.inc(len(records))
            predictions = await served.batcher.submit(records)
        except QueueFull as exc:
            raise RequestError(
                503, f"Model {served.name!r} is busy ({exc}); retry shortly.", "overloaded"
            ) from exc
        finally:
            queue.dec(len(records))
        self.observe(served, records, predictions, endpoint, started)
        return predictions

    def observe(
        self,
        served: Served,
        records: list[dict[str, Any]],
        predictions: list[Any],
        endpoint: str,
        started: float,
    ) -> None:
        """Metrics, drift window and request log for answered inputs."""
        name, fields = served.name, list(served.adapter.task.text_fields)
        texts = [input_text(r, fields) for r in records]
        labels, confidences = [], []
        for prediction in predictions:
            confidence = max(prediction.scores.values()) if prediction.scores else None
            labels.append(prediction.label)
            confidences.append(confidence)
            if prediction.label is not None:
                self.metrics.labels.labels(name, prediction.label).inc()
            if confidence is not None:
                self.metrics.confidence.labels(name).observe(confidence)
            if prediction.text is not None:
                self.metrics.tokens.labels(name).inc(len(prediction.text.split()))
        # the window only records here; a due drift test (about 10 ms) runs on the model's
        # thread between batches: on a thread of its own it would preempt the model's
        # threads mid-batch and cost them twice its time
        if served.window.add(texts, labels, confidences):
            snapshot = served.window.snapshot()
            task = asyncio.get_running_loop().create_task(self._test_drift(served, snapshot))
            self.drift_tests.add(task)
            task.add_done_callback(self.drift_tests.discard)
        if self.log is not None:
            latency = (time.perf_counter() - started) * 1000
            for text, prediction, confidence in zip(texts, predictions, confidences, strict=True):
                output = {
                    "label": prediction.label,
                    "confidence": confidence,
                    "text": prediction.text,
                }
                self.log.write(
                    name,
                    endpoint,
                    text,
                    {k: v for k, v in output.items() if v is not None},
                    latency,
                )

    async def _test_drift(self, served: Served, snapshot: WindowSnapshot) -> None:
        try:
            result = await served.batcher.call(served.window.test, snapshot)
        except Exception:  # monitoring must never take serving down with it
            log.exception("drift monitoring of %s failed", served.name)
            return
        self.metrics.record_drift(served.name, result)

    def monitor(self) -> dict[str, Any]:
        return {
            name: {
                "kind": served.kind,
                "profile": served.adapter.profile_.to_dict() if served.adapter.profile_ else None,
                "window": {
                    "size": served.window.size,
                    "filled": len(served.window.texts),
                    "seen": served.window.seen,
                },
                "drift": served.window.last,
                "history": [
                    {
                        "seen": r["seen"],
                        "alarm": r["alarm"],
                        "threshold": r["threshold"],
                        "p_values": {t: v["p_value"] for t, v in r["tests"].items()},
                    }
                    for r in served.window.history
                ],
            }
            for name, served in self.models.items()
        }

    def authorized(self, header: str | None) -> bool:
        if self.api_key is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )


def create_app(
    models: dict[str, Any],
    knowledge: dict[str, Any] | None = None,
    config: ServeConfig | None = None,
) -> Any:
    """A FastAPI app serving ``models`` (name → adapter folder or adapter) and ``knowledge``
    (name → knowledge base folder or object)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    from promptkit.serve.routes import add_routes

    config = config or ServeConfig.model_validate({})
    server = Server(models, knowledge or {}, config)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        for served in server.models.values():
            served.batcher.start()
        yield
        server.draining = True  # uvicorn has stopped accepting; finish what was accepted
        await asyncio.gather(*(s.batcher.drain() for s in server.models.values()))
        await asyncio.gather(*server.drift_tests)  # they run on the batchers' threads
        for served in server.models.values():
            served.batcher.close()
        if server.log is not None:
            server.log.close()

    app = FastAPI(title="promptkit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    def error(status: int, message: str, kind: str) -> JSONResponse:
        headers = {"Retry-After": "1"} if status == 503 else None
        return JSONResponse(
            {"error": {"message": message, "type": kind, "code": status}},
            status_code=status,
            headers=headers,
        )

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> Response:
        return error(exc.status, exc.message, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            return error(400, "The request body is not valid JSON.", "invalid_request_error")
        return error(400, f"{where or 'body'}: {message}", "invalid_request_error")

    @app.exception_handler(PromptkitError)
    async def promptkit_error(request: Request, exc: PromptkitError) -> Response:
        return error(400, str(exc).splitlines()[0], "invalid_request_error")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        return error(
            500, f"Internal error ({type(exc).__name__}); see the server log.", "server_error"
        )

    app.add_middleware(Guard, server=server)
    add_routes(app, server)
    return app


class Guard:
    """Plain ASGI middleware (no per-request task or stream, unlike ``@app.middleware``): the
    API key, the body limit (declared or streamed), and the request metrics."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from fastapi.responses import JSONResponse

        server, limit = self.server, self.server.config.max_body_bytes
        started = time.perf_counter()
        path = scope["path"]
        headers = dict(scope["headers"])
        refusal = None
        key = headers.get(b"authorization")
        if path not in OPEN_PATHS and not server.authorized(key.decode("latin-1") if key else None):
            refusal = (
                401,
                "Missing or wrong API key (Authorization: Bearer ...).",
                "authentication_error",
            )
        length = headers.get(b"content-length", b"0")
        if refusal is None and (not length.isdigit() or int(length) > limit):
            refusal = (413, f"The request body is over {limit} bytes.", "invalid_request_error")
        if refusal is not None:
            status, message, kind = refusal
            body = {"error": {"message": message, "type": kind, "code": status}}
            await JSONResponse(body, status_code=status)(scope, receive, send)
            self.count(scope, path, status, started)
            return
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # a streamed body without a declared length
                raise RequestError(413, f"The request body is over {limit} bytes.")
            return message

        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        scope.setdefault("state", {})["started"] = started
        try:
            await self.app(scope, limited, sending)
        finally:
            self.count(scope, path, status, started)

    def count(self, scope: Any, path: str, status: int, started: float) -> None:
        metrics = self.server.metrics
        model = scope.get("state", {}).get("model", "-")
        metrics.requests.labels(model, path, str(status)).inc()
        if status >= 400:
            metrics.errors.labels(model, path, str(status)).inc()
        metrics.latency.labels(model, path).observe(time.perf_counter() - started)


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def encode_embedding(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return [float(x) for x in vector]

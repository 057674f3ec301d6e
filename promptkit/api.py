"""Models behind an OpenAI-compatible API: OpenAI itself, vLLM, llama.cpp, Ollama, promptkit serve.

A model spec is ``"openai:gpt-4o-mini"`` or a dict ``{"provider": "openai", "name": ...,
"base_url": ..., "api_key_env": "OPENAI_API_KEY"}``. The key is read from the environment when a
request is sent; it is never stored in the spec, an artifact, a report, a log or an error.

:class:`APIClient` sends chat-completion requests with the behaviour a long evaluation needs:
``max_concurrency`` requests in flight, client-side rate limits (requests and tokens per minute),
retries with exponential backoff and jitter that honour ``Retry-After``, timeouts, and a
persistent cache keyed by (endpoint, model, request body), so a rerun sends nothing and a batch
that failed half-way resumes from what was answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from promptkit.config import StrictModel
from promptkit.errors import ConfigError, PromptkitError

PROVIDERS = {"openai": "https://api.openai.com/v1"}
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


class APIError(PromptkitError):
    """A request to a model API failed for good (after the retries the policy allows)."""


class APISpec(StrictModel):
    provider: str = Field(
        "openai", description="API flavour; 'openai' covers every compatible server."
    )
    name: str = Field(description="The model name the server knows.")
    base_url: str | None = Field(None, description="Server URL ending in /v1 (default: OpenAI's).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the key.")
    input_price: float | None = Field(
        None, ge=0, description="USD per million prompt tokens, for the evaluator's cost table."
    )
    output_price: float | None = Field(None, ge=0, description="USD per million completion tokens.")

    @property
    def url(self) -> str:
        return (self.base_url or PROVIDERS.get(self.provider, PROVIDERS["openai"])).rstrip("/")

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None


class RetryPolicy(StrictModel):
    attempts: int = Field(6, ge=1, description="Tries per request, the first included.")
    initial_delay: float = Field(0.5, ge=0, description="Seconds before the first retry.")
    max_delay: float = Field(30.0, ge=0)
    multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.25, ge=0, le=1, description="Random share added to each delay.")
    timeout: float = Field(60.0, gt=0, description="Seconds one request may take.")


def parse_spec(model: str | dict[str, Any] | APISpec | None) -> APISpec | None:
    """The API spec a model setting names, or None for a local model."""
    if isinstance(model, APISpec):
        return model
    if isinstance(model, dict):
        if "provider" not in model and "base_url" not in model:
            return None
        return APISpec.model_validate(model)
    if isinstance(model, str):
        provider, sep, name = model.partition(":")
        if sep and provider in PROVIDERS and name:
            return APISpec.model_validate({"provider": provider, "name": name})
    return None


class RateLimiter:
    """Requests and tokens per minute, spaced evenly (no bursts): a request may start
    ``60 / requests_per_minute`` seconds after the one before, and a request of ``t`` tokens
    holds the next one back ``60 * t / tokens_per_minute`` seconds. ``clock``/``sleep`` are
    injectable (tests use a fake clock)."""

    def __init__(self, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:  # fmt: skip
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.clock, self.sleep = clock, sleep
        self.next_start: float | None = None
        self._lock = asyncio.Lock()

    async def wait(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self._lock:
            now = self.clock()
            start = now if self.next_start is None else max(now, self.next_start)
            if start > now:
                await self.sleep(start - now)
            gap = max(60 / self.rpm if self.rpm else 0.0,
                      60 * tokens / self.tpm if self.tpm else 0.0)  # fmt: skip
            self.next_start = start + gap


class DiskCache:
    """JSON answers by sha256 of (endpoint, model, request body), one file each."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(url: str, body: dict[str, Any]) -> str:
        payload = json.dumps([url, body], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        if self.folder is None:
            return None
        path = self.folder / key[:2] / f"{key}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if self.folder is None:
            return
        path = self.folder / key[:2] / f"{key}.json"
        path.parent.mkdir(exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(value), encoding="utf-8")
        os.replace(temporary, path)  # a crash never leaves half an answer


class APIClient:
    """Chat completions against one model, concurrent, rate-limited, retried and cached."""

    def __init__(
        self,
        spec: APISpec,
        cache_dir: str | Path | None = None,
        max_concurrency: int = 8,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        retry: RetryPolicy | None = None,
        transport: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.spec = spec
        self.cache = DiskCache(cache_dir)
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy.model_validate({})
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute, clock, sleep)
        self.transport, self.sleep = transport, sleep
        self.calls = 0  # HTTP requests sent (cache hits send none)
        self.in_flight = self.max_in_flight = 0
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self._random = random.Random(0)

    def __repr__(self) -> str:  # never the key
        return f"APIClient(model={self.spec.name!r}, url={self.spec.url!r})"

    def chat(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answers to chat-completion request bodies (``model`` is filled in), in order."""
        return asyncio.run(self._all(bodies, "/chat/completions"))

    def complete(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answers to (legacy) completion request bodies, in order."""
        return asyncio.run(self._all(bodies, "/completions"))

    async def _all(self, bodies: list[dict[str, Any]], endpoint: str) -> list[dict[str, Any]]:
        import httpx

        semaphore = asyncio.Semaphore(self.max_concurrency)
        headers = {"Content-Type": "application/json"}
        key = self.spec.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        async with httpx.AsyncClient(
            base_url=self.spec.url, headers=headers, timeout=self.retry.timeout,
            transport=self.transport,
        ) as http:  # fmt: skip

            async def one(body: dict[str, Any]) -> dict[str, Any]:
                async with semaphore:
                    return await self._one(http, body, endpoint)

            full = [{**body, "model": self.spec.name} for body in bodies]
            unique = {json.dumps(b, sort_keys=True): b for b in full}  # never pay twice
            answers = await asyncio.gather(*(one(b) for b in unique.values()))
            by_body = dict(zip(unique, answers, strict=True))
            return [by_body[json.dumps(b, sort_keys=True)] for b in full]

    async def _one(self, http: Any, body: dict[str, Any], endpoint: str) -> dict[str, Any]:
        import httpx

        key = self.cache.key(self.spec.url + endpoint, body)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        texts = [str(m.get("content", "")) for m in body.get("messages", [])]
        prompt = body.get("prompt", [])
        texts += prompt if isinstance(prompt, list) else [str(prompt)]
        tokens = sum(len(t.split()) for t in texts)
        delay, problem = self.retry.initial_delay, "no attempt was made"
        for attempt in range(self.retry.attempts):
            await self.limiter.wait(tokens + int(body.get("max_tokens") or 0))
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            wait = None
            try:
                response = await http.post(endpoint, json=body)
            except httpx.TimeoutException as exc:
                problem = f"{type(exc).__name__}: no answer within {self.retry.timeout:.0f} s"
            except httpx.TransportError as exc:  # refused, reset, or a body cut short
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    try:
                        answer = response.json()
                        answer["choices"][0]
                    except (ValueError, KeyError, IndexError, TypeError):
                        problem = "the server answered with malformed JSON"
                    else:
                        self._account(answer)
                        self.cache.put(key, answer)
                        return answer
                elif response.status_code in RETRY_STATUSES:
                    problem = f"HTTP {response.status_code}"
                    wait = _retry_after(response.headers.get("retry-after"))
                else:
                    raise APIError(
                        f"{self.spec.url}{endpoint} answered HTTP {response.status_code} for "
                        f"model {self.spec.name!r}: {_message(response)}"
                    )
            finally:
                self.in_flight -= 1
            if attempt + 1 < self.retry.attempts:
                pause = wait if wait is not None else min(delay, self.retry.max_delay)
                pause *= 1 + self.retry.jitter * self._random.random()
                await self.sleep(pause)
                delay *= self.retry.multiplier
        raise APIError(
            f"{self.spec.url}{endpoint} failed {self.retry.attempts} times for model "
            f"{self.spec.name!r} ({problem}). Answers received so far are cached; run again to "
            "resume."
        )

    def spent(self) -> dict[str, float]:
        """Tokens and calls sent so far (cache hits cost nothing), with their price if known."""
        return spending(self.spec, self.calls, self.usage)

    def _account(self, answer: dict[str, Any]) -> None:
        usage = answer.get("usage") or {}
        for field in self.usage:
            self.usage[field] += int(usage.get(field) or 0)


def spending(
    spec: APISpec, calls: int = 0, usage: dict[str, int] | None = None
) -> dict[str, float]:
    """``calls`` and token ``usage`` as cost-table entries, priced where ``spec`` has prices."""
    usage = usage or {"prompt_tokens": 0, "completion_tokens": 0}
    spent: dict[str, float] = {"api_calls": calls, **{f"api_{k}": v for k, v in usage.items()}}
    if spec.input_price is not None or spec.output_price is not None:
        spent["api_cost_usd"] = (
            usage["prompt_tokens"] * (spec.input_price or 0.0)
            + usage["completion_tokens"] * (spec.output_price or 0.0)
        ) / 1e6
    return spent


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _message(response: Any) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("message") or error)[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


def require_spec(model: Any) -> APISpec:
    spec = parse_spec(model)
    if spec is None:
        raise ConfigError(f"{model!r} is not an API model: use 'openai:<name>' or a dict with "
                          "provider/base_url.")  # fmt: skip
    return spec

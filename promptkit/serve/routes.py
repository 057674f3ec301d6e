"""The endpoints: health, models, predict, completions (streamed or not), embeddings, search,
metrics and the monitor."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from promptkit.serve.app import RequestError, Server, completion_id, encode_embedding


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send settings we do not use


class PredictBody(_Body):
    model: str
    input: str | dict[str, Any] | list[str | dict[str, Any]]


class CompletionBody(_Body):
    model: str
    prompt: str | list[str]
    stream: bool = False
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    max_tokens: int | None = Field(None, ge=0)


class Message(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatBody(_Body):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=1)


class EmbeddingBody(_Body):
    model: str
    input: str | list[str]
    encoding_format: str = "float"


class SearchBody(_Body):
    knowledge: str | None = None
    model: str | None = None
    query: str
    k: int = Field(5, ge=1, le=100)
    filter: dict[str, Any] | None = None
    hybrid: bool = False
    distinct: str | None = None


def _chat_text(messages: list[Message]) -> str:
    """The last user message's text (the adapters answer one question at a time)."""
    for message in reversed(messages):
        if message.role == "user":
            content = message.content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
            return content or ""
    raise RequestError(400, "messages holds no user message.")


def add_routes(app: Any, server: Server) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if server.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse(
            {
                "status": "ready",
                "models": sorted(server.models),
                "knowledge": sorted(server.knowledge),
            }
        )

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        created = int(server.started)
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "promptkit",
                "task": served.kind,
                "adapter": served.adapter.name,
            }
            for name, served in server.models.items()
        ]
        data += [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "promptkit",
                "task": "embedding",
                "embedder": kb.embedder_name,
            }
            for name, kb in server.knowledge.items()
        ]
        return {"object": "list", "data": data}

    @app.post("/predict")
    async def predict(body: PredictBody, request: Request) -> Response:
        served = server.model(body.model, "classification")
        request.state.model = served.name
        records = server.records(served, body.input)
        predictions = await server.predict(served, records, "predict", request.state.started)
        # a ready response: FastAPI would otherwise validate and re-encode the dict
        return JSONResponse(
            {"model": served.name, "predictions": [p.to_dict() for p in predictions]}
        )

    async def generate(name: str, prompts: list[str], endpoint: str, request: Request) -> Any:
        served = server.model(name, "generation")
        request.state.model = served.name
        records = server.records(served, prompts)
        return served, await server.predict(served, records, endpoint, request.state.started)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request) -> Response:
        prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
        if body.echo and body.logprobs is not None:
            return await _echo(server, body, prompts, request)
        served, predictions = await generate(body.model, prompts, "completions", request)
        ident, created = completion_id("cmpl"), int(time.time())
        if body.stream:

            def chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
                return {
                    "id": ident,
                    "object": "text_completion",
                    "created": created,
                    "model": served.name,
                    "choices": [
                        {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
                    ],
                }

            return _stream(predictions, chunk)
        choices = [
            {"index": i, "text": p.text or "", "finish_reason": "stop", "logprobs": None}
            for i, p in enumerate(predictions)
        ]
        return JSONResponse(
            {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": served.name,
                "choices": choices,
                "usage": _usage(prompts, predictions),
                "promptkit": {"sources": [p.sources or [] for p in predictions]},
            }
        )

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request) -> Response:
        prompt = _chat_text(body.messages)
        if body.logprobs and body.top_logprobs:
            return await _first_token(server, body, prompt, request)
        served, predictions = await generate(body.model, [prompt], "chat", request)
        ident, created = completion_id("chatcmpl"), int(time.time())
        if body.stream:

            def chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
                delta = {"role": "assistant", "content": text} if text else {}
                return {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": served.name,
                    "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
                }

            return _stream(predictions, chunk)
        answer = predictions[0]
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": served.name,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": answer.text or ""},
                    }
                ],
                "usage": _usage([prompt], predictions),
                "promptkit": {"sources": answer.sources or []},
            }
        )

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingBody, request: Request) -> dict[str, Any]:
        kb = _knowledge(server, body.model)
        request.state.model = body.model
        texts = body.input if isinstance(body.input, list) else [body.input]
        if not texts or len(texts) > server.config.max_inputs:
            raise RequestError(400, f"Give 1 to {server.config.max_inputs} inputs.")
        if any(not isinstance(t, str) or len(t) > server.config.max_input_chars for t in texts):
            raise RequestError(
                413, f"Inputs are strings of at most {server.config.max_input_chars} characters."
            )
        if body.encoding_format not in ("float", "base64"):
            raise RequestError(400, "encoding_format is 'float' or 'base64'.")
        import asyncio

        vectors = await asyncio.to_thread(kb.embedder.encode, texts, False)
        return {
            "object": "list",
            "model": body.model,
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": encode_embedding(v, body.encoding_format),
                }
                for i, v in enumerate(vectors)
            ],
            "usage": {
                "prompt_tokens": sum(len(t.split()) for t in texts),
                "total_tokens": sum(len(t.split()) for t in texts),
            },
        }

    @app.post("/v1/search")
    async def search(body: SearchBody, request: Request) -> dict[str, Any]:
        name = body.knowledge or body.model
        kb = _knowledge(server, name)
        request.state.model = name
        if len(body.query) > server.config.max_input_chars:
            raise RequestError(413, "The query is too long.")
        import asyncio

        hits = await asyncio.to_thread(
            kb.search, body.query, body.k, body.filter, body.hybrid, False, None, body.distinct
        )
        return {"knowledge": name, "hits": [h.to_dict() for h in hits]}

    @app.get("/metrics")
    async def metrics() -> Response:
        for name, served in server.models.items():
            server.metrics.queue.labels(name).set(served.batcher.waiting)
        payload, content_type = server.metrics.render()
        return Response(payload, media_type=content_type)

    async def settled() -> dict[str, Any]:
        """The monitor's state once the drift tests begun before this request are done."""
        import asyncio

        await asyncio.gather(*server.drift_tests)
        return server.monitor()

    @app.get("/monitor")
    async def monitor() -> dict[str, Any]:
        return await settled()

    @app.get("/monitor.html")
    async def monitor_page() -> HTMLResponse:
        from promptkit.serve.page import monitor_html

        return HTMLResponse(monitor_html(await settled()))


async def _first_token(server: Server, body: ChatBody, prompt: str, request: Request) -> Response:
    """The answer's first token with its ``top_logprobs`` (what verbalizer scoring over an API
    asks for); with ``max_tokens`` 1 that token is the whole answer."""
    served = server.model(body.model, "generation")
    request.state.model = served.name
    scorer = getattr(served.adapter, "next_token_logprobs", None)
    if scorer is None:
        raise RequestError(400, f"Model {served.name!r} cannot give token log-probabilities.")
    if body.max_tokens not in (None, 1):
        raise RequestError(400, "logprobs are given for the first token only: set max_tokens 1.")
    server.records(served, [prompt])  # the input limits
    tops = (await served.batcher.call(scorer, [prompt], body.top_logprobs))[0]

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    first = {**entry(*tops[0]), "top_logprobs": [entry(t, lp) for t, lp in tops]}
    return JSONResponse({
        "id": completion_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
        "model": served.name,
        "choices": [{"index": 0, "finish_reason": "length", "logprobs": {"content": [first]},
                     "message": {"role": "assistant", "content": tops[0][0]}}],
        "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 1,
                  "total_tokens": len(prompt.split()) + 1},
    })  # fmt: skip


async def _echo(server: Server, body: CompletionBody, prompts: list[str], request: Request
                ) -> Response:  # fmt: skip
    """The log-probability of every prompt token (``echo`` with ``max_tokens`` 0): what scoring
    whole label words over an API asks for."""
    served = server.model(body.model, "generation")
    request.state.model = served.name
    scorer = getattr(served.adapter, "prompt_logprobs", None)
    if scorer is None:
        raise RequestError(400, f"Model {served.name!r} cannot give prompt log-probabilities.")
    if body.max_tokens not in (None, 0):
        raise RequestError(400, "echo with logprobs scores the prompt only: set max_tokens 0.")
    server.records(served, prompts)  # the input limits
    scored = await served.batcher.call(scorer, prompts)
    choices = [
        {"index": i, "text": prompt, "finish_reason": "length",
         "logprobs": {"tokens": tokens, "token_logprobs": values, "text_offset": offsets,
                      "top_logprobs": None}}
        for i, (prompt, (tokens, values, offsets)) in enumerate(zip(prompts, scored, strict=True))
    ]  # fmt: skip
    count = sum(len(tokens) for tokens, _, _ in scored)
    return JSONResponse({
        "id": completion_id("cmpl"), "object": "text_completion", "created": int(time.time()),
        "model": served.name, "choices": choices,
        "usage": {"prompt_tokens": count, "completion_tokens": 0, "total_tokens": count},
    })  # fmt: skip


def _knowledge(server: Server, name: Any) -> Any:
    if not isinstance(name, str) or name not in server.knowledge:
        known = ", ".join(sorted(server.knowledge)) or "none"
        raise RequestError(
            404, f"Unknown knowledge base {name!r}; served: {known}.", "model_not_found"
        )
    return server.knowledge[name]


def _usage(prompts: list[str], predictions: list[Any]) -> dict[str, int]:
    prompt = sum(len(p.split()) for p in prompts)
    completion = sum(len((p.text or "").split()) for p in predictions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _stream(predictions: list[Any], chunk: Any) -> Any:
    """Server-sent events: each answer word by word, then a finish chunk, then [DONE]."""

    async def events() -> AsyncIterator[str]:
        for index, prediction in enumerate(predictions):
            words = (prediction.text or "").split(" ")
            for position, word in enumerate(words):
                piece = word if position == 0 else " " + word
                if piece:
                    yield f"data: {json.dumps(chunk(index, piece, None))}\n\n"
            final = chunk(index, "", "stop")
            if prediction.sources:
                final["promptkit"] = {"sources": prediction.sources}
            yield f"data: {json.dumps(final)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")

"""The prompt adapter's API side: scoring and generating through an OpenAI-compatible server
(:class:`OverAPI`), and the token log-probabilities a server gives such a client
(:class:`TokenLogprobs`, used by ``promptkit serve``).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from promptkit.adapters.base import Prediction
from promptkit.api import APIClient, APIError, APISpec, RetryPolicy, parse_spec, spending
from promptkit.config import StrictModel
from promptkit.errors import ConfigError

API_TOP_LOGPROBS = 20  # OpenAI's maximum


class APISettings(StrictModel):
    """The prompt adapter's settings for a model behind an API."""

    max_concurrency: int = Field(8, ge=1, description="API models: requests in flight.")
    requests_per_minute: float | None = Field(None, gt=0, description="API models: rate limit.")
    tokens_per_minute: float | None = Field(None, gt=0, description="API models: rate limit.")
    api_cache: str | None = Field(
        None, description="API models: answer cache folder (default: the user cache folder)."
    )
    api_scoring: Literal["auto", "echo", "first_token", "generate"] = Field(
        "auto",
        description="API classification: 'echo' scores whole label words from the server's "
        "prompt log-probabilities, 'first_token' from the answer's top_logprobs; 'auto' uses "
        "echo where the server supports it. 'generate' (only when asked: servers without "
        "log-probabilities) asks for one label word, constrained by a JSON schema where the "
        "server honours one, and parses the answer: a label, not a probability.",
    )
    retry: RetryPolicy = Field(
        default_factory=lambda: RetryPolicy.model_validate({}), description="API models: retries."
    )


class OverAPI:
    """Classification and generation when the prompt adapter's model is an API."""

    config: Any
    _model: Any
    scoring_mode_: str | None

    if TYPE_CHECKING:

        def _normalize(self, total: float, length: int) -> float: ...

    def api_usage(self) -> dict[str, float] | None:
        """Tokens, calls and cost spent on the API so far (None for a local model)."""
        spec = parse_spec(self.config.model)
        if spec is None:
            return None
        if isinstance(self._model, APIClient):
            return self._model.spent()
        return spending(spec)  # nothing sent yet

    def _api_client(self, spec: APISpec) -> APIClient:
        from platformdirs import user_cache_dir

        config = self.config
        return APIClient(
            spec,
            config.api_cache or str(user_cache_dir("promptkit") + "/api"),
            config.max_concurrency,
            config.requests_per_minute,
            config.tokens_per_minute,
            config.retry,
        )

    def _score_api(self, prompts: list[str], words: list[str]) -> list[list[float]]:
        """Label-word scores over an API, by the scoring mode the settings and server allow."""
        mode = self.config.api_scoring
        if mode == "auto" and self.scoring_mode_ == "first_token":
            mode = "first_token"  # this server was found to echo no prompt log-probabilities
        if mode == "generate":
            self.scoring_mode_ = "generate"
            return self._score_generated(prompts, words)
        if mode in ("auto", "echo"):
            try:
                rows = self._score_echo(prompts, words)
                self.scoring_mode_ = "echo"
                return rows
            except (APIError, ConfigError) as exc:
                if mode == "echo":
                    raise
                import warnings

                warnings.warn(
                    f"{str(exc)[:160].rstrip('.')}: label words are scored from the first "
                    "answer token's top_logprobs instead, which is not the same measurement "
                    "(adapter.scoring_mode_ says which was used).",
                    stacklevel=3,
                )
        self.scoring_mode_ = "first_token"
        return self._score_first_token(prompts, words)

    def _score_echo(self, prompts: list[str], words: list[str]) -> list[list[float]]:
        """Whole label words, as locally: one completion request per input echoing the prompt
        followed by each word; a word scores its tokens' log-probabilities (sum or mean)."""
        answers = self._model.complete(
            [{"prompt": [p + w for w in words], "max_tokens": 0, "echo": True, "logprobs": 0}
             for p in prompts]
        )  # fmt: skip
        rows = []
        for prompt, answer in zip(prompts, answers, strict=True):
            row = []
            for choice in answer["choices"]:
                logprobs = choice.get("logprobs") or {}
                offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
                if not offsets or not values or min(offsets) > 0:  # the prompt's, not the answer's
                    raise ConfigError("The server returned no prompt log-probabilities.")
                mine = [v for o, v in zip(offsets, values, strict=True)
                        if o >= len(prompt) and v is not None]  # fmt: skip
                row.append(self._normalize(sum(mine), len(mine)) if mine else -50.0)
            rows.append(row)
        return rows

    def _score_first_token(self, prompts: list[str], words: list[str]) -> list[list[float]]:
        """First-token scoring over an API: one request per prompt for the ``top_logprobs`` of
        the answer's first token; a word scores the best log-probability of a listed token it
        starts with (a word no listed token starts gets the lowest listed one, less log 2)."""
        answers = self._model.chat(
            [{"messages": [{"role": "user", "content": p}], "max_tokens": 1,
              "temperature": 0.0, "logprobs": True, "top_logprobs": API_TOP_LOGPROBS}
             for p in prompts]
        )  # fmt: skip
        rows = []
        for answer in answers:
            try:
                listed = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
                tops = [(str(t["token"]).strip().lower(), float(t["logprob"])) for t in listed]
            except (KeyError, IndexError, TypeError) as exc:
                raise ConfigError(
                    "The API returned no top_logprobs, which verbalizer scoring needs; this "
                    "server cannot classify by label-word probabilities."
                ) from exc
            floor = min(lp for _, lp in tops) - math.log(2) if tops else -50.0
            row = []
            for word in words:
                target = word.strip().lower()
                found = [lp for token, lp in tops if token and target.startswith(token)]
                row.append(max(found) if found else floor)
            rows.append(row)
        return rows

    def _score_generated(self, prompts: list[str], words: list[str]) -> list[list[float]]:
        """Constrained generation plus parsing: the answer names one label word (a JSON schema
        with their enum, where the server honours it; else the first word found in free text).
        The named word scores 0 and the others -50; an answer naming none leaves all equal."""
        import json
        import warnings

        choices = sorted({w.strip() for w in words if w.strip()})
        schema = {"type": "object", "properties": {"label": {"enum": choices}},
                  "required": ["label"], "additionalProperties": False}  # fmt: skip
        answers = self._model.chat(
            [{"messages": [{"role": "user", "content": p}], "max_tokens": 24,
              "temperature": 0.0, "seed": self.config.seed,
              "response_format": {"type": "json_schema",
                                  "json_schema": {"name": "label", "schema": schema}}}
             for p in prompts]
        )  # fmt: skip
        rows, unparsed = [], 0
        for answer in answers:
            text = answer["choices"][0].get("message", {}).get("content") or ""
            try:
                named = str(json.loads(text)["label"]).strip().lower()
            except (ValueError, KeyError, TypeError):
                named = _first_named(text, choices)
            unparsed += not named
            rows.append([0.0 if w.strip().lower() == named else -50.0 for w in words])
        if unparsed:
            warnings.warn(
                f"{unparsed} of {len(prompts)} generated answers named no label word; they "
                "score every label alike.",
                stacklevel=3,
            )
        return rows

    def _generate_api(self, prompts: list[str]) -> list[Prediction]:
        """Chat completions: stop strings, max tokens, temperature and seed passed through."""
        config = self.config
        body: dict[str, Any] = {
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature if config.do_sample else 0.0,
            "seed": config.seed,
        }
        if config.do_sample and config.top_p < 1:
            body["top_p"] = config.top_p
        if config.stop:
            body["stop"] = list(config.stop)[:4]  # the OpenAI API takes at most four
        answers = self._model.chat(
            [{**body, "messages": [{"role": "user", "content": p}]} for p in prompts]
        )
        texts = []
        for answer in answers:
            text = answer["choices"][0].get("message", {}).get("content") or ""
            for stop in config.stop:  # a server may ignore stop strings: cut here as well
                text = text.split(stop)[0] if stop else text
            texts.append(text.strip())
        return [Prediction(text=t) for t in texts]


def _first_named(text: str, choices: list[str]) -> str:
    """The choice (lower-cased) whose whole word comes first in ``text``; "" if none does."""
    found = []
    for choice in choices:
        match = re.search(rf"\b{re.escape(choice)}\b", text, re.IGNORECASE)
        if match:
            found.append((match.start(), choice.lower()))
    return min(found)[1] if found else ""


class TokenLogprobs:
    """What an OpenAI-compatible server returns as ``logprobs``, from a local causal LM."""

    config: Any
    _model: Any
    _tokenizer: Any
    _head: str

    if TYPE_CHECKING:

        def _ensure_model(self) -> None: ...
        def _wrap_chat(self, text: str) -> str: ...
        def _uses_chat(self) -> bool: ...

    def prompt_logprobs(
        self, texts: list[str]
    ) -> list[tuple[list[str], list[float | None], list[int]]]:
        """Per text: its tokens, each token's log-probability given those before it (None for
        the first) and each token's character offset — an OpenAI server's ``echo`` logprobs."""
        import torch

        self._ensure_model()
        if self._head != "causal_lm":
            raise ConfigError("Prompt log-probabilities need a causal LM.")
        tokenizer, out = self._tokenizer, []
        device = next(self._model.parameters()).device
        with torch.inference_mode():
            for text in texts:
                encoded = tokenizer(text, add_special_tokens=not self._uses_chat(),
                                    return_offsets_mapping=True)  # fmt: skip
                ids = encoded["input_ids"]
                logits = self._model(input_ids=torch.tensor([ids], device=device)).logits[0]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                values: list[float | None] = [None] + [
                    float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))
                ]
                tokens = [tokenizer.decode([i]) for i in ids]
                offsets = [int(start) for start, _ in encoded["offset_mapping"]]
                out.append((tokens, values, offsets))
        return out

    def next_token_logprobs(self, texts: list[str], top: int = 20) -> list[list[tuple[str, float]]]:
        """The ``top`` likeliest first tokens of the answer to each raw message (the model's
        chat template applied, no task template), with log-probabilities — what an
        OpenAI-compatible server returns as ``top_logprobs``."""
        import torch

        self._ensure_model()
        if self._head != "causal_lm":
            raise ConfigError("Token log-probabilities need a causal LM.")
        tokenizer = self._tokenizer
        prompts = [self._wrap_chat(t) for t in texts]
        out: list[list[tuple[str, float]]] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.config.batch_size):
                part = prompts[start : start + self.config.batch_size]
                rows = [tokenizer(p, add_special_tokens=not self._uses_chat())["input_ids"]
                        for p in part]  # fmt: skip
                width = max(len(r) for r in rows)
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
                device = next(self._model.parameters()).device
                logits = self._model(
                    input_ids=ids.to(device), attention_mask=mask.to(device)
                ).logits
                last = logits[torch.arange(len(rows)), mask.sum(1) - 1].float()
                values, indices = torch.log_softmax(last, dim=-1).topk(min(top, last.shape[-1]))
                for value_row, index_row in zip(values.tolist(), indices.tolist(), strict=True):
                    out.append([(tokenizer.decode([i]), v)
                                for i, v in zip(index_row, value_row, strict=True)])  # fmt: skip
        return out

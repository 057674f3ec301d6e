"""The "prompt" adapter: zero- and few-shot prompting with no training.

Classification scores each label's verbalizer words under the model: the log-likelihood of the
(possibly multi-token) word after the rendered prompt, summed or length-normalized, then combined
over a label's words so that a label with more words gains nothing (``aggregate``). Prompt and
word are tokenized together and the word's tokens taken from the joint encoding, so the scored
tokens are the ones the model would produce. The label prior measured on content-free inputs can
be divided out (contextual calibration, Zhao et al., 2021), with the same demonstrations each
input sees. Generation decodes the rendered prompt. With a chat model, the prompt is the user turn.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from promptkit import models
from promptkit.adapters.base import Adapter, AdapterConfig, FitResult, Prediction
from promptkit.adapters.encoding import length_sorted
from promptkit.adapters.heads import GenerationOptions, generate, heads
from promptkit.adapters.prompt_api import APISettings, OverAPI, TokenLogprobs
from promptkit.api import parse_spec
from promptkit.data import read_file, write_jsonl
from promptkit.devices import resolve_device, to_device
from promptkit.errors import DataError
from promptkit.templates import TruncationStats

CONTENT_FREE = ("N/A", "", "[MASK]")
_MODEL_CACHE: dict[tuple[str, ...], Any] = {}


class PromptConfig(APISettings, AdapterConfig):
    model: str | dict[str, Any] | None = Field(  # type: ignore[assignment]
        "smollm2-135m-instruct",
        description="A causal or seq2seq LM; or an API model: 'openai:<name>' or "
        "{provider, name, base_url, api_key_env}.",
    )
    max_length: int = Field(512, ge=8, le=32768)
    batch_size: int = Field(
        8, ge=1, description="Prompts per forward pass; scoring runs at most this many rows."
    )
    scoring: Literal["sum", "mean"] = Field(
        "mean", description="Sum of label-word token log-probs, or their mean (length-normalized)."
    )
    aggregate: Literal["mean", "max", "sum"] = Field(
        "mean",
        description="How a label's verbalizer words combine: mean of their probabilities (a "
        "label with more words gains nothing), the best word, or the sum (favours labels with "
        "more words).",
    )
    calibrate: bool = Field(False, description="Contextual calibration on content-free inputs.")
    shots: int = Field(0, ge=0, le=64, description="Demonstrations placed before each input.")
    chat: bool = Field(True, description="Wrap the prompt in the model's chat template if any.")
    max_new_tokens: int = Field(64, ge=1, le=4096)
    min_new_tokens: int = Field(
        1, ge=0, description="Tokens generated before the end of sequence may end an answer."
    )
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=lambda: ["\n\n"], description="Cut output here.")


@dataclass
class _Scored:
    """One (prompt, word) pair: its joint token ids and where the word's tokens start."""

    ids: list[int]
    start: int  # ids[start:] are the word's tokens (joint encoding); the rest conditions


class PromptAdapter(OverAPI, TokenLogprobs, Adapter):
    """Zero/few-shot prompting. ``fit`` only keeps demonstrations (when ``shots > 0``)."""

    name = "prompt"
    Config: ClassVar[type[AdapterConfig]] = PromptConfig
    trains = False
    config: PromptConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.demonstrations_: list[dict[str, Any]] = []
        self.prior_: list[float] | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._head = ""
        self.scoring_mode_: str | None = None  # API classification: how label words were scored

    # ---- model --------------------------------------------------------------------------------

    def _ensure_model(self) -> None:
        if self._model is not None:
            return
        spec = parse_spec(self.config.model)
        if spec is not None:  # an API model: no weights here, the server holds them
            self._head, self._model = "api", self._api_client(spec)
            return
        source = str(self.config.model or "")
        self._head = models.architecture_head(source)
        device = str(resolve_device(self.config.device))
        key = (models.resolve(source), self._head, device, self.config.dtype)
        if key not in _MODEL_CACHE:
            auto_class = heads.get(self._head).auto_class
            model = models.load_model(source, auto_class, self.config.dtype, device)
            model.eval()
            _MODEL_CACHE[key] = (model, models.load_tokenizer(source))
        self._model, self._tokenizer = _MODEL_CACHE[key]

    def _count(self, text: str) -> int:
        if self._head == "api":  # the server's tokenizer is not here: about 4 characters each
            return max(1, len(text) // 4)
        return len(self._tokenizer(text, add_special_tokens=not self._uses_chat())["input_ids"])

    # ---- prompts ------------------------------------------------------------------------------

    def _demos_for(self, index: int, record: dict[str, Any]) -> list[dict[str, Any]]:
        if not self.config.shots:
            return []
        if "demonstrations" in record:  # supplied per input, e.g. retrieved by a knowledge base
            return list(record["demonstrations"])[: self.config.shots]
        if not self.demonstrations_:
            return []
        rng = random.Random(self.config.seed * 100_003 + index)
        pool = self.demonstrations_
        return rng.sample(pool, min(self.config.shots, len(pool)))

    def _answer_of(self, record: dict[str, Any]) -> str:
        if self.task.kind == "classification":
            label = record[self.task.label_field]
            return self.task.template_obj.label_words(self.task.labels)[label][0]
        return str(record[self.task.target_field])

    def prompts(self, records: list[dict[str, Any]]) -> list[str]:
        """The exact model input for each record: demonstrations, template, chat wrapping.

        A prompt longer than the model allows is fitted, never cut at either end: demonstrations
        go first (the earliest first, so the one next to the input, the nearest when retrieved,
        stays longest), then the template's ``drop`` list (retrieved passages, the
        lowest-ranked first), then the template's ``truncate`` field. The chat header, the
        instruction and the answer slot always stay.
        """
        self._ensure_model()
        template = self.task.template_obj
        separator = str(template.few_shot.get("separator", "\n\n"))
        specials = self._count("")  # tokens the tokenizer adds to any text (BOS, say)
        budget = self._input_budget() - self._count(self._wrap_chat("")) + specials
        stats = TruncationStats()
        texts = []
        for index, record in enumerate(records):
            demos = [
                self.task.render(d) + template.answer_prefix + self._answer_of(d)
                for d in self._demos_for(index, record)
            ]
            while demos and self._count(separator.join([*demos, ""])) > budget // 2:
                demos.pop(0)  # at most half the room; the one next to the input stays longest
            prefix = separator.join([*demos, ""]) if demos else ""
            room = max(budget - (self._count(prefix) - specials if prefix else 0), 1)
            body = template.render_fitted(record, self._count, room, stats, labels=self.task.labels)
            texts.append(self._wrap_chat(prefix + body))
        stats.warn(template.name, budget)
        return texts

    def _input_budget(self) -> int:
        """Most prompt tokens the model accepts, leaving room for the generated answer."""
        if self._head == "api":
            return self.config.max_length
        config = self._model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        budget = self.config.max_length
        if isinstance(limit, int) and self._head == "causal_lm":
            reserve = self.config.max_new_tokens if self.task.kind == "generation" else 16
            budget = min(budget, limit - reserve)
        return max(budget, 8)

    def _wrap_chat(self, text: str) -> str:
        if self._head == "api" or not self._uses_chat():  # an API applies its own chat template
            return text
        return self._tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )

    def _uses_chat(self) -> bool:
        if self._head == "api":  # the server applies the model's chat template
            return self.config.chat
        return bool(self.config.chat and getattr(self._tokenizer, "chat_template", None))

    # ---- adapter hooks ------------------------------------------------------------------------

    def _fit(
        self,
        train: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None,
        *,
        resume: bool,
        run_dir: Path | None,
    ) -> FitResult:
        self.demonstrations_ = list(train[:2000]) if self.config.shots else []
        if self.task.kind == "classification" and self.config.calibrate and not self.config.shots:
            self._ensure_prior()
        return FitResult(trainable_params=0, total_params=self._parameter_count())

    def _parameter_count(self) -> int:
        self._ensure_model()
        if self._head == "api":
            return 0
        return sum(p.numel() for p in self._model.parameters())

    def _content_free(self, demonstrations: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        field = self.task.text_fields[0]
        rows: list[dict[str, Any]] = [
            {f: "" for f in self.task.text_fields} | {field: v} for v in CONTENT_FREE
        ]
        if demonstrations is not None:
            rows = [{**row, "demonstrations": demonstrations} for row in rows]
        return rows

    def _ensure_prior(self) -> list[float]:
        """The label prior on content-free inputs (zero-shot: one prior for every input)."""
        if self.prior_ is None:
            self.prior_ = self._prior(self._content_free(None))
        return self.prior_

    def _prior(self, rows: list[dict[str, Any]]) -> list[float]:
        probs = [_softmax(row) for row in self._score_all(self.prompts(rows))]
        return [sum(col) / len(col) for col in zip(*probs, strict=True)]

    def _priors(self, records: list[dict[str, Any]]) -> list[list[float]] | None:
        """Per input, the prior to divide out. With demonstrations, each input's prior is
        measured with the very demonstrations that input sees."""
        if not self.config.calibrate:
            return None
        if not self.config.shots:
            return [self._ensure_prior()] * len(records)
        return [
            self._prior(self._content_free(self._demos_for(i, record)))
            for i, record in enumerate(records)
        ]

    def _predict(self, records: list[dict[str, Any]]) -> list[Prediction]:
        self._ensure_model()
        if self.config.shots:  # fix each input's demonstrations once, for prompt and prior alike
            records = [
                {**r, "demonstrations": self._demos_for(i, r)} for i, r in enumerate(records)
            ]
        prompts = self.prompts(records)
        if self.task.kind == "generation":
            return self._generate(prompts)
        priors = self._priors(records)
        labels = self.task.labels
        predictions = []
        for index, row in enumerate(self._score_all(prompts)):
            probs = _softmax(row)
            if priors is not None:
                probs = [p / max(q, 1e-12) for p, q in zip(probs, priors[index], strict=True)]
                total = sum(probs)
                probs = [p / total for p in probs]
            best = max(range(len(labels)), key=probs.__getitem__)
            predictions.append(
                Prediction(label=labels[best], scores=dict(zip(labels, probs, strict=True)))
            )
        return predictions

    # ---- scoring ------------------------------------------------------------------------------

    def _label_words(self) -> list[tuple[int, str]]:
        """(label index, text after the prompt) for every verbalizer word of every label."""
        words = self.task.template_obj.label_words(self.task.labels)
        prefix = "" if self._uses_chat() else self.task.template_obj.answer_prefix
        return [
            (index, prefix + word)
            for index, label in enumerate(self.task.labels)
            for word in words[label]
        ]

    def _score_all(self, prompts: list[str]) -> list[list[float]]:
        """Per prompt, one log-score per label, combined over its words by ``aggregate``."""
        import torch

        words = self._label_words()
        if self._head == "api":
            rows = self._score_api(prompts, [w for _, w in words])
            return [self._per_label(row, [label for label, _ in words]) for row in rows]

        score = self._score_seq2seq if self._head == "seq2seq_lm" else self._score_causal
        order = length_sorted(prompts, len)
        word_scores: list[list[float]] = [[] for _ in prompts]
        with torch.inference_mode():
            for start in range(0, len(order), self.config.batch_size):
                indices = order[start : start + self.config.batch_size]
                rows = score([prompts[i] for i in indices], [w for _, w in words])
                for i, row in zip(indices, rows, strict=True):
                    word_scores[i] = row
        return [self._per_label(row, [label for label, _ in words]) for row in word_scores]

    def _per_label(self, row: list[float], owners: list[int]) -> list[float]:
        per_label: list[list[float]] = [[] for _ in self.task.labels]
        for label, value in zip(owners, row, strict=True):
            per_label[label].append(value)
        if self.config.aggregate == "max":
            return [max(values) for values in per_label]
        combined = [_logsumexp(values) for values in per_label]
        if self.config.aggregate == "mean":  # log of the mean probability of the label's words
            combined = [c - math.log(len(v)) for c, v in zip(combined, per_label, strict=True)]
        return combined

    def _normalize(self, total: float, length: int) -> float:
        return total / length if self.config.scoring == "mean" else total

    def _joint(self, prompt: str, words: list[str]) -> list[_Scored]:
        """Tokenize prompt + word together; the word's tokens are those that end after the
        prompt text (a token that straddles the boundary belongs to the word)."""
        special = not self._uses_chat()
        scored = []
        for word in words:
            encoded = self._tokenizer(
                prompt + word, add_special_tokens=special, return_offsets_mapping=True
            )
            ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
            start = len(ids)
            for position, (begin, end) in enumerate(offsets):
                if end > len(prompt) or (begin >= len(prompt) and end > begin):
                    start = position
                    break
            if start >= len(ids) or start == 0:
                raise DataError(
                    f"The label word {word!r} adds no token after the prompt; give the label a "
                    "verbalizer word that the tokenizer encodes."
                )
            scored.append(_Scored(ids, start))
        return scored

    def _score_causal(self, prompts: list[str], words: list[str]) -> list[list[float]]:
        """Log-likelihood of every word after every prompt.

        The tokens every word of a prompt shares run once; their key/value cache is then reused
        for the words' own tokens, in chunks of at most ``batch_size`` rows, so memory stays
        bounded by ``batch_size`` whatever the number of words.
        """
        import torch
        from transformers import DynamicCache

        device = self._model.device
        pad = self._tokenizer.pad_token_id or 0
        pairs = [self._joint(p, words) for p in prompts]
        # the shared part: every word's tokens agree on it, and it ends before any word starts
        shared = []
        for scored in pairs:
            length = min(s.start for s in scored)
            first = scored[0].ids
            while length > 1 and any(s.ids[:length] != first[:length] for s in scored):
                length -= 1
            shared.append(length - 1)  # the last shared token is fed with the word's tokens
        width = max(shared)
        ids = torch.full((len(prompts), max(width, 1)), pad)
        mask = torch.zeros((len(prompts), max(width, 1)), dtype=torch.long)
        for i, (scored, n) in enumerate(zip(pairs, shared, strict=True)):
            if n:  # left padding: every shared part ends at the last column
                ids[i, width - n :] = torch.tensor(scored[0].ids[:n])
                mask[i, width - n :] = 1
        cache = None
        if width:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = self._model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=True,
                logits_to_keep=1,
            ).cache
        rows = [(i, j) for i in range(len(prompts)) for j in range(len(words))]
        totals = [[0.0] * len(words) for _ in prompts]
        for begin in range(0, len(rows), self.config.batch_size):
            chunk = rows[begin : begin + self.config.batch_size]
            tails = [pairs[i][j].ids[shared[i] :] for i, j in chunk]
            longest = max(len(t) for t in tails)
            tail_ids = torch.full((len(chunk), longest), pad)
            tail_mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            targets = torch.full((len(chunk), longest), -100)
            for r, ((i, j), tail) in enumerate(zip(chunk, tails, strict=True)):
                tail_ids[r, : len(tail)] = torch.tensor(tail)
                tail_mask[r, : len(tail)] = 1
                skip = pairs[i][j].start - shared[i]  # tail tokens before the word condition
                word = tail[skip:]
                targets[r, skip - 1 : skip - 1 + len(word)] = torch.tensor(word)
            prompt_rows = torch.tensor([i for i, _ in chunk])
            step_mask = torch.cat([mask[prompt_rows], tail_mask], dim=1)
            offset = torch.tensor([shared[i] for i, _ in chunk])[:, None]
            step_positions = offset + torch.arange(longest)[None, :]
            rows_cache = None
            if cache is not None:
                selected = prompt_rows.to(device)
                rows_cache = DynamicCache(
                    [(layer.keys[selected], layer.values[selected]) for layer in cache.layers]
                )
            logits = self._model(
                input_ids=tail_ids.to(device),
                attention_mask=step_mask.to(device),
                position_ids=step_positions.to(device),
                cache=rows_cache,
                use_cache=rows_cache is not None,
            ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            sums = (picked * (targets != -100)).sum(-1).tolist()
            for (i, j), total in zip(chunk, sums, strict=True):
                totals[i][j] = self._normalize(total, len(pairs[i][j].ids) - pairs[i][j].start)
        return totals

    def _score_seq2seq(self, prompts: list[str], words: list[str]) -> list[list[float]]:
        """Encoder-decoder: each word is what the decoder produces, so it is encoded alone."""
        import torch

        encoded = self._tokenizer(prompts, return_tensors="pt", padding=True)
        encoded = to_device(encoded, self._model.device)
        hidden = self._model.get_encoder()(**encoded).last_hidden_state
        word_ids = [
            self._tokenizer(w.strip(), add_special_tokens=False)["input_ids"]
            or [self._tokenizer.unk_token_id or 0]
            for w in words
        ]
        rows = [(i, j) for i in range(len(prompts)) for j in range(len(words))]
        totals = [[0.0] * len(words) for _ in prompts]
        for begin in range(0, len(rows), self.config.batch_size):
            chunk = rows[begin : begin + self.config.batch_size]
            longest = max(len(word_ids[j]) for _, j in chunk)
            labels = torch.full((len(chunk), longest), -100)
            for r, (_, j) in enumerate(chunk):
                labels[r, : len(word_ids[j])] = torch.tensor(word_ids[j])
            selected = torch.tensor([i for i, _ in chunk], device=hidden.device)
            logits = self._model(
                encoder_outputs=(hidden[selected],),
                attention_mask=encoded["attention_mask"][selected],
                labels=labels.to(hidden.device),
            ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            sums = (picked * (labels != -100)).sum(-1).tolist()
            for (i, j), total in zip(chunk, sums, strict=True):
                totals[i][j] = self._normalize(total, len(word_ids[j]))
        return totals

    # ---- generation ---------------------------------------------------------------------------

    def _generate(self, prompts: list[str]) -> list[Prediction]:
        if self._head == "api":
            return self._generate_api(prompts)
        options = GenerationOptions(
            max_new_tokens=self.config.max_new_tokens,
            min_new_tokens=self.config.min_new_tokens,
            do_sample=self.config.do_sample,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=self.config.seed,
            stop=list(self.config.stop),
            batch_size=self.config.batch_size,
            add_special_tokens=not self._uses_chat(),
        )
        causal = self._head == "causal_lm"
        texts = generate(self._model, self._tokenizer, prompts, options, causal=causal)
        return [Prediction(text=t) for t in texts]

    # ---- persistence --------------------------------------------------------------------------

    def _state_bytes(self) -> int:
        return len(json.dumps(self.demonstrations_, default=str)) if self.demonstrations_ else 0

    def _save(self, directory: Path) -> None:
        state = {"prior": self.prior_}
        (directory / "prompt_state.json").write_text(json.dumps(state))
        if self.demonstrations_:
            write_jsonl(directory / "demonstrations.jsonl", self.demonstrations_)

    def _load(self, directory: Path, manifest: dict[str, Any]) -> None:
        state = json.loads((directory / "prompt_state.json").read_text())
        self.prior_ = state.get("prior")
        demos = directory / "demonstrations.jsonl"
        self.demonstrations_ = read_file(demos) if demos.is_file() else []


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))

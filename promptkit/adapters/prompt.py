"""The "prompt" adapter: zero- and few-shot prompting with no training.

Classification scores each label's verbalizer words under the model — the log-likelihood of the
(possibly multi-token) word after the rendered prompt, summed or length-normalized — and can divide
out the label prior measured on content-free inputs (contextual calibration, Zhao et al., 2021).
Generation decodes the rendered prompt. With a chat model, the prompt becomes the user turn.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from promptkit import models
from promptkit.adapters.base import Adapter, AdapterConfig, FitResult, Prediction
from promptkit.adapters.encoding import length_sorted, render_inputs
from promptkit.data import read_file, write_jsonl

CONTENT_FREE = ("N/A", "", "[MASK]")
_MODEL_CACHE: dict[tuple[str, str], Any] = {}


class PromptConfig(AdapterConfig):
    model: str | None = Field("smollm2-135m-instruct", description="A causal or seq2seq LM.")
    max_length: int = Field(512, ge=8, le=32768)
    batch_size: int = Field(8, ge=1)
    scoring: Literal["sum", "mean"] = Field(
        "mean", description="Sum of label-word token log-probs, or their mean (length-normalized)."
    )
    calibrate: bool = Field(False, description="Contextual calibration on content-free inputs.")
    shots: int = Field(0, ge=0, le=64, description="Demonstrations placed before each input.")
    chat: bool = Field(True, description="Wrap the prompt in the model's chat template if any.")
    max_new_tokens: int = Field(64, ge=1, le=4096)
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=lambda: ["\n\n"], description="Cut output here.")


class PromptAdapter(Adapter):
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

    # ---- model --------------------------------------------------------------------------------

    def _ensure_model(self) -> None:
        if self._model is not None:
            return
        source = self.config.model or ""
        self._head = models.architecture_head(source)
        key = (models.resolve(source), self._head)
        if key not in _MODEL_CACHE:
            model = models.load_model(source, self._head)
            model.eval()
            _MODEL_CACHE[key] = (model, models.load_tokenizer(source))
        self._model, self._tokenizer = _MODEL_CACHE[key]

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
        """The exact model input for each record: demonstrations, template, chat wrapping."""
        self._ensure_model()
        template = self.task.template_obj
        separator = str(template.few_shot.get("separator", "\n\n"))
        bodies = render_inputs(
            self.task, records, self._tokenizer, self._input_budget(), reserve=self._demo_budget()
        )
        texts = []
        for index, (record, body) in enumerate(zip(records, bodies, strict=True)):
            demos = [
                self.task.render(d) + template.answer_prefix + self._answer_of(d)
                for d in self._demos_for(index, record)
            ]
            texts.append(self._wrap_chat(separator.join([*demos, body])))
        return texts

    def _input_budget(self) -> int:
        """Most prompt tokens the model accepts, leaving room for the generated answer."""
        config = self._model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        budget = self.config.max_length
        if isinstance(limit, int) and self._head == "causal_lm":
            reserve = self.config.max_new_tokens if self.task.kind == "generation" else 16
            budget = min(budget, limit - reserve)
        return max(budget, 8)

    def _demo_budget(self) -> int:
        return min(self.config.max_length // 2, 48 * self.config.shots)

    def _wrap_chat(self, text: str) -> str:
        tokenizer = self._tokenizer
        if not self.config.chat or not getattr(tokenizer, "chat_template", None):
            return text
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )

    def _uses_chat(self) -> bool:
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
        if self.task.kind == "classification" and self.config.calibrate:
            self._ensure_prior()
        return FitResult(trainable_params=0, total_params=self._parameter_count())

    def _parameter_count(self) -> int:
        self._ensure_model()
        return sum(p.numel() for p in self._model.parameters())

    def _ensure_prior(self) -> list[float]:
        if self.prior_ is None:
            field = self.task.text_fields[0]
            rows = [
                {f: "" for f in self.task.text_fields} | {field: value} for value in CONTENT_FREE
            ]
            probs = [self._label_probabilities(p) for p in self.prompts(rows)]
            self.prior_ = [sum(col) / len(col) for col in zip(*probs, strict=True)]
        return self.prior_

    def _predict(self, records: list[dict[str, Any]]) -> list[Prediction]:
        prompts = self.prompts(records)
        if self.task.kind == "generation":
            return self._generate(prompts)
        prior = self._ensure_prior() if self.config.calibrate else None
        labels = self.task.labels
        scores = self._score_all(prompts)
        predictions = []
        for row in scores:
            probs = _softmax(row)
            if prior is not None:
                probs = [p / max(q, 1e-12) for p, q in zip(probs, prior, strict=True)]
                total = sum(probs)
                probs = [p / total for p in probs]
            best = max(range(len(labels)), key=probs.__getitem__)
            predictions.append(
                Prediction(label=labels[best], scores=dict(zip(labels, probs, strict=True)))
            )
        return predictions

    # ---- scoring ------------------------------------------------------------------------------

    def _label_probabilities(self, prompt: str) -> list[float]:
        return _softmax(self._score_all([prompt])[0])

    def _continuations(self) -> list[tuple[int, list[int]]]:
        """(label index, token ids) for every verbalizer word of every label."""
        words = self.task.template_obj.label_words(self.task.labels)
        prefix = "" if self._uses_chat() else self.task.template_obj.answer_prefix
        out = []
        for index, label in enumerate(self.task.labels):
            for word in words[label]:
                ids = self._tokenizer(prefix + word, add_special_tokens=False)["input_ids"]
                out.append((index, ids or [self._tokenizer.unk_token_id or 0]))
        return out

    def _score_all(self, prompts: list[str]) -> list[list[float]]:
        """Per prompt, one log-score per label (log-sum-exp over that label's words)."""
        import torch

        continuations = self._continuations()
        budget = self._input_budget()
        prompt_ids = [  # an over-long prompt keeps its end: the answer slot must stay
            self._tokenizer(p, add_special_tokens=not self._uses_chat())["input_ids"][-budget:]
            for p in prompts
        ]
        order = length_sorted(prompt_ids, len)
        word_scores: list[list[float]] = [[] for _ in prompts]
        score = self._score_seq2seq if self._head == "seq2seq_lm" else self._score_causal
        with torch.inference_mode():
            for start in range(0, len(order), self.config.batch_size):
                indices = order[start : start + self.config.batch_size]
                rows = score([prompt_ids[i] for i in indices], [c for _, c in continuations])
                for i, row in zip(indices, rows, strict=True):
                    word_scores[i] = row
        results = []
        for row in word_scores:
            per_label = [-math.inf] * len(self.task.labels)
            for (label, _), value in zip(continuations, row, strict=True):
                per_label[label] = _logaddexp(per_label[label], value)
            results.append(per_label)
        return results

    def _normalize(self, total: Any, length: Any) -> Any:
        return total / length if self.config.scoring == "mean" else total

    def _score_causal(self, prompts: list[list[int]], conts: list[list[int]]) -> list[list[float]]:
        """Log-likelihood of every continuation after every prompt.

        Each prompt runs once; its key/value cache is then repeated for the continuations, so
        scoring C label words costs one prompt pass, not C.
        """
        import torch

        pad = self._tokenizer.pad_token_id or 0
        n_prompts, n_conts = len(prompts), len(conts)
        width = max(len(p) for p in prompts)
        ids = torch.full((n_prompts, width), pad)
        mask = torch.zeros((n_prompts, width), dtype=torch.long)
        for i, prompt in enumerate(prompts):  # left padding: every prompt ends at the last column
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (P, V)
        firsts = torch.tensor([c[0] for c in conts])
        totals = first[:, firsts]  # (P, C)
        longest = max(len(c) for c in conts)
        if longest > 1:
            cache = out.past_key_values
            cache.batch_repeat_interleave(n_conts)
            rest = torch.full((n_conts, longest - 1), pad)
            rest_mask = torch.zeros((n_conts, longest - 1), dtype=torch.long)
            targets = torch.full((n_conts, longest - 1), -100)
            for j, cont in enumerate(conts):
                rest[j, : len(cont) - 1] = torch.tensor(cont[:-1])
                rest_mask[j, : len(cont) - 1] = 1
                targets[j, : len(cont) - 1] = torch.tensor(cont[1:])
            step_mask = torch.cat(
                [mask.repeat_interleave(n_conts, 0), rest_mask.repeat(n_prompts, 1)], dim=1
            )
            step_pos = (
                positions[:, -1:].repeat_interleave(n_conts, 0) + 1 + torch.arange(longest - 1)
            )
            logits = self._model(
                input_ids=rest.repeat(n_prompts, 1),
                attention_mask=step_mask,
                position_ids=step_pos,
                past_key_values=cache,
            ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            tgt = targets.repeat(n_prompts, 1)
            picked = logprobs.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (tgt != -100)
            totals = totals + picked.sum(-1).view(n_prompts, n_conts)
        lengths = torch.tensor([len(c) for c in conts], dtype=torch.float32)
        return self._normalize(totals, lengths).tolist()

    def _score_seq2seq(self, prompts: list[list[int]], conts: list[list[int]]) -> list[list[float]]:
        import torch

        inputs = self._tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
        encoder = self._model.get_encoder()(**inputs)
        n_prompts, n_conts = len(prompts), len(conts)
        longest = max(len(c) for c in conts)
        labels = torch.full((n_conts, longest), -100)
        for j, cont in enumerate(conts):
            labels[j, : len(cont)] = torch.tensor(cont)
        labels = labels.repeat(n_prompts, 1)
        hidden = encoder.last_hidden_state.repeat_interleave(n_conts, 0)
        logits = self._model(
            encoder_outputs=(hidden,),
            attention_mask=inputs["attention_mask"].repeat_interleave(n_conts, 0),
            labels=labels,
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (
            labels != -100
        )
        totals = picked.sum(-1).view(n_prompts, n_conts)
        lengths = torch.tensor([len(c) for c in conts], dtype=torch.float32)
        return self._normalize(totals, lengths).tolist()

    # ---- generation ---------------------------------------------------------------------------

    def _generate(self, prompts: list[str]) -> list[Prediction]:
        import torch

        tokenizer = self._tokenizer
        order = length_sorted(prompts, len)
        texts: list[str] = [""] * len(prompts)
        side = tokenizer.padding_side
        tokenizer.padding_side = "left" if self._head == "causal_lm" else "right"
        truncation_side = tokenizer.truncation_side
        tokenizer.truncation_side = "left"  # keep the end of an over-long prompt
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.config.batch_size):
                    indices = order[start : start + self.config.batch_size]
                    batch = tokenizer(
                        [prompts[i] for i in indices],
                        return_tensors="pt",
                        padding=True,
                        truncation=True,
                        max_length=self._input_budget(),
                        add_special_tokens=not self._uses_chat(),
                    )
                    kwargs: dict[str, Any] = {
                        "max_new_tokens": self.config.max_new_tokens,
                        "do_sample": self.config.do_sample,
                        "pad_token_id": tokenizer.pad_token_id,
                    }
                    if self.config.do_sample:
                        torch.manual_seed(self.config.seed + start)
                        kwargs.update(temperature=self.config.temperature, top_p=self.config.top_p)
                    output = self._model.generate(**batch, **kwargs)
                    if self._head == "causal_lm":
                        output = output[:, batch["input_ids"].shape[1] :]
                    for i, text in zip(
                        indices,
                        tokenizer.batch_decode(output, skip_special_tokens=True),
                        strict=True,
                    ):
                        texts[i] = _cut(text, self.config.stop)
        finally:
            tokenizer.padding_side = side
            tokenizer.truncation_side = truncation_side
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


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    top = max(a, b)
    return top + math.log(math.exp(a - top) + math.exp(b - top))


def _cut(text: str, stops: list[str]) -> str:
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()

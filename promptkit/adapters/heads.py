"""What a model predicts through: a classification head, a causal LM or a seq2seq LM.

One small strategy object per head owns what differs between them — how records become token
rows, how rows are collated, how a model turns records into predictions, which metric picks the
best checkpoint, which ``transformers`` Auto class and PEFT task type it uses — so the adapters
never branch on the head. The LM heads share one generation routine (:func:`generate`) with the
``prompt`` adapter: left padding, stop strings, seeded sampling, batches on the model's device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from promptkit.adapters.base import Prediction
from promptkit.adapters.encoding import length_sorted, render_inputs
from promptkit.adapters.packing import Packer
from promptkit.devices import model_device, to_device
from promptkit.errors import ConfigError
from promptkit.metrics import metrics
from promptkit.registry import Registry
from promptkit.task import Task

Rows = list[dict[str, Any]]


@dataclass
class GenerationOptions:
    """Decoding settings shared by every generating adapter."""

    max_new_tokens: int = 32
    min_new_tokens: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    batch_size: int = 8
    add_special_tokens: bool = True


class Head(ABC):
    """The head-specific part of fine-tuning (and of loading an LM for prompting)."""

    name: ClassVar[str]
    auto_class: ClassVar[str]  # the transformers Auto class that loads this head
    peft_task_type: ClassVar[str]
    default_metric: ClassVar[str] = "loss"
    generates: ClassVar[bool] = True

    def __init__(self, task: Task, tokenizer: Any, max_length: int) -> None:
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length

    # ---- training -----------------------------------------------------------------------------

    @abstractmethod
    def encode(self, records: Rows, with_targets: bool) -> Rows:
        """Token rows (``input_ids``, ``attention_mask`` and, for training, ``labels``)."""

    def collator(self) -> Any:
        from transformers import DataCollatorForSeq2Seq

        # pads labels with -100 so padding never counts in the loss; works for causal LMs too
        return DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100)

    def check_metric(self, metric: str) -> None:
        if metric != "loss":
            raise ConfigError(
                f"metric={metric!r} needs a classification head; a {self.name} model selects "
                "its best checkpoint on 'loss' (the default)."
            )

    def higher_is_better(self, metric: str) -> bool:
        return False if metric == "loss" else metrics.get(metric).higher_is_better

    def trainer_metrics(self, metric: str) -> dict[str, Any]:
        """``compute_metrics`` / ``preprocess_logits_for_metrics`` for ``Trainer`` (none here)."""
        return {}

    def class_weights(self, setting: Any, train: Rows) -> list[float] | None:
        if setting is not None:
            raise ConfigError(f"class_weights apply to classification, not to a {self.name}.")
        return None

    def model_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` / config settings (a classifier's label names)."""
        return {}

    # ---- prediction ---------------------------------------------------------------------------

    def predict(self, model: Any, records: Rows, options: GenerationOptions) -> list[Prediction]:
        prompts = render_inputs(self.task, records, self.tokenizer, self.max_length)
        texts = generate(model, self.tokenizer, prompts, options, causal=self.name == "causal_lm")
        return [Prediction(text=t) for t in texts]


class ClassificationHead(Head):
    """A sequence-classification head sized to the label set.

    Without a named template the model reads the text fields alone (two or more fields joined
    as a tokenizer pair); a prompt's scaffolding only adds tokens for a classification head.
    """

    name = "seq_cls"
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    default_metric = "accuracy"
    generates = False
    _packer: Packer | None = None

    def encode(self, records: Rows, with_targets: bool) -> Rows:
        tokenizer, max_length = self.tokenizer, self.max_length
        if self.task.template_named:
            texts = render_inputs(self.task, records, tokenizer, max_length)
            encoded = tokenizer(texts, truncation=True, max_length=max_length)
        else:
            first, *rest = self.task.text_fields
            separator = f" {tokenizer.sep_token} " if tokenizer.sep_token else " "
            pairs = [separator.join(str(r[f]) for f in rest) for r in records] if rest else None
            encoded = tokenizer(
                [str(r[first]) for r in records], pairs, truncation=True, max_length=max_length
            )
        rows = _rows(encoded)
        if with_targets:
            index = {label: i for i, label in enumerate(self.task.labels)}
            for row, record in zip(rows, records, strict=True):
                row["labels"] = index[record[self.task.label_field]]
        return rows

    def collator(self) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def check_metric(self, metric: str) -> None:
        if metric != "loss" and metrics.get(metric).kind != "classification":
            raise ConfigError(f"metric={metric!r} is not a classification metric.")

    def trainer_metrics(self, metric: str) -> dict[str, Any]:
        from promptkit.metrics import ClassificationBatch

        spec = metrics.get(metric if metric != "loss" else "accuracy")
        labels = list(self.task.labels)

        def compute(prediction: Any) -> dict[str, float]:
            batch = ClassificationBatch(
                np.asarray(prediction.label_ids).astype(np.int64).ravel(),
                np.asarray(prediction.predictions).astype(np.int64).ravel(),
                labels,
            )
            return {spec.name: spec.compute(batch)}

        return {"compute_metrics": compute, "preprocess_logits_for_metrics": _argmax}

    def class_weights(self, setting: Any, train: Rows) -> list[float] | None:
        labels = self.task.labels
        if setting is None:
            return None
        if setting == "balanced":
            counts = dict.fromkeys(labels, 0)
            for record in train:
                counts[record[self.task.label_field]] += 1
            return [len(train) / (len(labels) * max(counts[label], 1)) for label in labels]
        unknown = set(setting) - set(labels)
        if unknown:
            raise ConfigError(
                f"class_weights names unknown label(s) {sorted(unknown)}; labels are {labels}."
            )
        return [float(setting.get(label, 1.0)) for label in labels]

    def model_kwargs(self) -> dict[str, Any]:
        labels = dict(enumerate(self.task.labels))
        return {
            "num_labels": len(labels),
            "id2label": labels,
            "label2id": {v: k for k, v in labels.items()},
        }

    def packer(self, model: Any) -> Packer:
        """The model's :class:`Packer` (made once per model: it remembers its check)."""
        if self._packer is None or self._packer.source is not model:
            self._packer = Packer(model)
        return self._packer

    def predict(self, model: Any, records: Rows, options: GenerationOptions) -> list[Prediction]:
        import torch

        rows = self.encode(records, with_targets=False)
        order = length_sorted(rows, lambda r: len(r["input_ids"]))
        results: list[Prediction] = [Prediction()] * len(rows)
        labels, device = self.task.labels, model_device(model)
        packer = self.packer(model)
        with torch.inference_mode():
            for start in range(0, len(order), options.batch_size):
                indices = order[start : start + options.batch_size]
                chunk = [rows[i] for i in indices]

                def padded(chunk: Rows = chunk) -> Any:
                    inputs = self.tokenizer.pad(chunk, return_tensors="pt")
                    return model(**to_device(inputs, device)).logits

                logits = packer.logits(chunk, padded) if packer.worth_it(chunk) else padded()
                # softmax in numpy: a torch op here wakes torch's CPU thread pool, whose
                # spinning threads then slow an onnxruntime model's next batch (int8 MiniLM
                # predict measured 495-509 reviews/s with torch.softmax, 709-742 without)
                scores = logits.float().cpu().numpy()
                scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
                probs = (scores / scores.sum(axis=-1, keepdims=True)).tolist()
                for i, p in zip(indices, probs, strict=True):
                    best = max(range(len(p)), key=p.__getitem__)
                    results[i] = Prediction(
                        label=labels[best], scores=dict(zip(labels, p, strict=True))
                    )
        return results


class CausalLMHead(Head):
    """A decoder-only LM: the prompt, then the target; the loss counts the target only."""

    name = "causal_lm"
    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"

    def encode(self, records: Rows, with_targets: bool) -> Rows:
        tokenizer, max_length = self.tokenizer, self.max_length
        target_budget = max(8, max_length // 4)
        prompts = render_inputs(
            self.task, records, tokenizer, max_length, reserve=target_budget if with_targets else 0
        )
        eos = tokenizer.eos_token or ""
        rows = []
        for prompt, record in zip(prompts, records, strict=True):
            prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
            if not with_targets:
                rows.append({"input_ids": prompt_ids, "attention_mask": [1] * len(prompt_ids)})
                continue
            answer = " " + str(record[self.task.target_field]).strip() + eos
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:target_budget]
            # the prompt was fitted to leave the answer room; a cut never drops the prompt's start
            ids = (prompt_ids + answer_ids)[:max_length]
            labels = ([-100] * len(prompt_ids) + answer_ids)[:max_length]  # loss on target only
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        return rows

    def predict(self, model: Any, records: Rows, options: GenerationOptions) -> list[Prediction]:
        # prompts get the budget they had in training (max_length less the target's room), and
        # never less room than the answer being generated: prompt and answer fit max_length
        reserve = max(max(8, self.max_length // 4), options.max_new_tokens)
        prompts = render_inputs(self.task, records, self.tokenizer, self.max_length, reserve)
        texts = generate(model, self.tokenizer, prompts, options, causal=True)
        return [Prediction(text=t) for t in texts]


class Seq2SeqHead(Head):
    """An encoder-decoder LM: the prompt is encoded, the target decoded."""

    name = "seq2seq_lm"
    auto_class = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"

    def encode(self, records: Rows, with_targets: bool) -> Rows:
        tokenizer, max_length = self.tokenizer, self.max_length
        prompts = render_inputs(self.task, records, tokenizer, max_length)
        encoded = tokenizer(prompts, truncation=True, max_length=max_length)
        rows = _rows(encoded)
        if with_targets:
            targets = tokenizer(
                [str(r[self.task.target_field]) for r in records],
                truncation=True,
                max_length=max(8, max_length // 4),
            )
            for row, ids in zip(rows, targets["input_ids"], strict=True):
                row["labels"] = ids
        return rows


heads: Registry[type[Head]] = Registry("model head")
heads.register("seq_cls", ClassificationHead)
heads.register("causal_lm", CausalLMHead)
heads.register("seq2seq_lm", Seq2SeqHead)


def generate(
    model: Any, tokenizer: Any, prompts: list[str], options: GenerationOptions, causal: bool
) -> list[str]:
    """Decode every prompt: length-sorted batches on the model's device, cut at stop strings.

    Sampling is seeded per batch from ``options.seed``, so the same call gives the same texts.
    """
    import torch
    from transformers import set_seed

    order = length_sorted(prompts, len)
    texts = [""] * len(prompts)
    device = model_device(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left" if causal else "right"  # a causal LM continues at the edge
    try:
        with torch.inference_mode():
            for start in range(0, len(order), options.batch_size):
                indices = order[start : start + options.batch_size]
                batch = tokenizer(
                    [prompts[i] for i in indices],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=options.add_special_tokens,
                )
                kwargs: dict[str, Any] = {
                    "max_new_tokens": options.max_new_tokens,
                    "min_new_tokens": min(options.min_new_tokens, options.max_new_tokens),
                    "do_sample": options.do_sample,
                    "pad_token_id": tokenizer.pad_token_id,
                }
                if options.do_sample:  # seeded per batch: the same call gives the same texts
                    set_seed(options.seed * 1_000_003 + start)
                    kwargs.update(temperature=options.temperature, top_p=options.top_p)
                output = model.generate(**to_device(batch, device), **kwargs)
                if causal:
                    output = output[:, batch["input_ids"].shape[1] :]
                decoded = tokenizer.batch_decode(output, skip_special_tokens=True)
                for i, text in zip(indices, decoded, strict=True):
                    texts[i] = cut_at_stop(text, options.stop)
    finally:
        tokenizer.padding_side = side
    return texts


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The text up to the first of ``stops`` (stripped)."""
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()


def _rows(encoded: Any) -> Rows:
    """A tokenizer's batch output as one dict per example."""
    return [
        {"input_ids": ids, "attention_mask": mask}
        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
    ]


def _argmax(logits: Any, labels: Any) -> Any:
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)

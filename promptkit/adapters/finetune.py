"""Fine-tuning on transformers ``Trainer``: the "full" adapter and the base of the PEFT ones.

Classification trains a sequence-classification head sized to the label set; generation trains a
causal LM with the loss on the target tokens only, or a seq2seq LM. The template renders every
input, so training, prediction and evaluation see the same text.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from promptkit import models
from promptkit.adapters.base import Adapter, AdapterConfig, FitResult, Prediction
from promptkit.adapters.encoding import length_sorted, render_inputs
from promptkit.augment import augmenters
from promptkit.errors import ConfigError
from promptkit.metrics import metrics

Head = Literal["auto", "seq_cls", "causal_lm", "seq2seq_lm"]
PROBE_ROWS = 16


class TrainingConfig(AdapterConfig):
    """Training settings, named the same in every trainable adapter and in YAML run configs."""

    model: str | None = Field("minilm", description="Model alias, Hugging Face id or local path.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training data.")
    learning_rate: float = Field(5e-5, gt=0, le=1, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps spent warming up.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables).")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    dropout: float | None = Field(None, ge=0, lt=1, description="Override the model's dropout.")
    class_weights: Literal["balanced"] | dict[str, float] | None = Field(
        None, description="'balanced' or a weight per label, for imbalanced classes."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement."
    )
    metric: str = Field("accuracy", description="Metric for early stopping and the best model.")
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N steps (else per epoch)."
    )
    logging_steps: int = Field(20, ge=1)
    augment: str | None = Field(None, description="Data augmenter name, e.g. 'word_dropout'.")
    augment_copies: int = Field(1, ge=1, le=10)
    head: Head = Field("auto", description="Model head; 'auto' picks from task and architecture.")
    from_scratch: bool = Field(False, description="Initialize weights randomly from the config.")
    report_to: list[str] = Field(default_factory=list, description="e.g. ['tensorboard'].")
    save_checkpoints: bool = Field(True, description="Keep checkpoints in the run directory.")
    max_new_tokens: int = Field(32, ge=1, description="Generation length at prediction time.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value != "loss" and value not in metrics:
            raise ValueError(metrics.unknown_message(value))
        return value

    @field_validator("augment")
    @classmethod
    def _known_augmenter(cls, value: str | None) -> str | None:
        if value is not None and value not in augmenters:
            raise ValueError(augmenters.unknown_message(value))
        return value


class FineTuneAdapter(Adapter):
    """Shared Trainer pipeline. Subclasses change what trains through :meth:`_wrap_model`."""

    Config: ClassVar[type[AdapterConfig]] = TrainingConfig
    config: TrainingConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.model_: Any = None
        self.tokenizer_: Any = None
        self.head_: str | None = None

    # ---- hooks for subclasses -----------------------------------------------------------------

    def _wrap_model(self, model: Any) -> Any:
        """Return the model to train (PEFT adapters wrap it; full fine-tuning trains it all)."""
        return model

    def _save_model(self, directory: Path) -> None:
        self.model_.save_pretrained(directory / "model")

    def _load_model(self, directory: Path, manifest: dict[str, Any]) -> Any:
        return self._base_model(str(directory / "model"), pretrained=True)

    def _saved_tensors(self) -> dict[str, Any]:
        """The tensors ``_save_model`` writes (every weight, for full fine-tuning)."""
        return dict(self.model_.state_dict())

    def _state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._saved_tensors().values())

    # ---- model construction -------------------------------------------------------------------

    def _resolve_head(self) -> str:
        if self.config.head != "auto":
            return self.config.head
        if self.task.kind == "classification":
            return "seq_cls"
        return models.architecture_head(self.config.model or "")

    def _base_model(self, source: str, pretrained: bool) -> Any:
        import torch
        import transformers

        head = self.head_ = self._resolve_head()
        labels = dict(enumerate(self.task.labels))
        if pretrained and not self.config.from_scratch:
            model = models.load_model(
                source,
                head,  # type: ignore[arg-type]
                id2label=labels if head == "seq_cls" else None,
            )
        else:
            config = transformers.AutoConfig.from_pretrained(models.resolve(source))
            if head == "seq_cls":
                config.num_labels, config.id2label = len(labels), labels
                config.label2id = {v: k for k, v in labels.items()}
            auto = {
                "seq_cls": transformers.AutoModelForSequenceClassification,
                "causal_lm": transformers.AutoModelForCausalLM,
                "seq2seq_lm": transformers.AutoModelForSeq2SeqLM,
            }[head]
            torch.manual_seed(self.config.seed)
            model = auto.from_config(config)
        if self.config.dropout is not None:
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = self.config.dropout
        if getattr(model.config, "pad_token_id", None) is None and self.tokenizer_ is not None:
            model.config.pad_token_id = self.tokenizer_.pad_token_id
        return model

    # ---- encoding -----------------------------------------------------------------------------

    def _encode(self, records: list[dict[str, Any]], with_targets: bool) -> list[dict[str, Any]]:
        tokenizer, max_length = self.tokenizer_, self.config.max_length
        if self.head_ == "seq_cls":
            texts = render_inputs(self.task, records, tokenizer, max_length)
            encoded = tokenizer(texts, truncation=True, max_length=max_length)
            rows = [
                {"input_ids": ids, "attention_mask": mask}
                for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
            ]
            if with_targets:
                index = {label: i for i, label in enumerate(self.task.labels)}
                for row, record in zip(rows, records, strict=True):
                    row["labels"] = index[record[self.task.label_field]]
            return rows
        target_budget = max(8, max_length // 4)
        prompts = render_inputs(
            self.task, records, tokenizer, max_length, reserve=target_budget if with_targets else 0
        )
        if self.head_ == "seq2seq_lm":
            encoded = tokenizer(prompts, truncation=True, max_length=max_length)
            rows = [
                {"input_ids": ids, "attention_mask": mask}
                for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
            ]
            if with_targets:
                targets = tokenizer(
                    [str(r[self.task.target_field]) for r in records],
                    truncation=True,
                    max_length=target_budget,
                )
                for row, ids in zip(rows, targets["input_ids"], strict=True):
                    row["labels"] = ids
            return rows
        rows = []
        eos = tokenizer.eos_token or ""
        for prompt, record in zip(prompts, records, strict=True):
            prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
            if not with_targets:
                rows.append({"input_ids": prompt_ids, "attention_mask": [1] * len(prompt_ids)})
                continue
            answer = " " + str(record[self.task.target_field]).strip() + eos
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:target_budget]
            ids = (prompt_ids + answer_ids)[-max_length:]
            labels = ([-100] * len(prompt_ids) + answer_ids)[-max_length:]  # loss on target only
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        return rows

    def _collator(self) -> Any:
        from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

        if self.head_ == "seq_cls":
            return DataCollatorWithPadding(self.tokenizer_)
        # pads labels with -100 so padding never counts in the loss; works for causal LMs too
        return DataCollatorForSeq2Seq(self.tokenizer_, label_pad_token_id=-100)

    # ---- training -----------------------------------------------------------------------------

    def _fit(
        self,
        train: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None,
        *,
        resume: bool,
        run_dir: Path | None,
    ) -> FitResult:
        from transformers import EarlyStoppingCallback

        from promptkit.adapters.trainer import PromptkitTrainer, training_arguments

        if not self.config.model:
            raise ConfigError(f"The {self.name!r} adapter needs model=... (an alias, id or path).")
        if self.config.early_stopping_patience and eval_data is None:
            raise ConfigError("early_stopping_patience needs eval_data: pass it to fit().")
        if self.model_ is None:
            self.tokenizer_ = models.load_tokenizer(self.config.model)
            self.model_ = self._wrap_model(self._base_model(self.config.model, pretrained=True))
        train = self._augmented(train)
        train_rows = self._encode(train, with_targets=True)
        eval_rows = self._encode(eval_data, with_targets=True) if eval_data else None
        # initial and final loss on one small fixed batch: a sanity check whose cost does not
        # grow with the data (64 rows cost 5% of a 640-example MiniLM fit; 16 rows, about 1%)
        probe = train_rows[:PROBE_ROWS]
        initial_loss = self._mean_loss(probe)

        scratch = run_dir is None
        out = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="promptkit-run-"))
        out.mkdir(parents=True, exist_ok=True)
        try:
            args = training_arguments(
                self.config,
                out,
                has_eval=eval_rows is not None,
                higher_is_better=self._higher_is_better(),
                save=self.config.save_checkpoints and not scratch,
            )
            callbacks = []
            if self.config.early_stopping_patience:
                callbacks.append(EarlyStoppingCallback(self.config.early_stopping_patience))
            trainer = PromptkitTrainer(
                model=self.model_,
                args=args,
                train_dataset=train_rows,
                eval_dataset=eval_rows,
                data_collator=self._collator(),
                callbacks=callbacks,
                compute_metrics=self._compute_metrics
                if eval_rows and self.head_ == "seq_cls"
                else None,
                preprocess_logits_for_metrics=_argmax if self.head_ == "seq_cls" else None,
                class_weights=self._class_weights(train),
                metrics_log=out / "metrics.jsonl",
                label_smoothing=self.config.label_smoothing,
            )
            checkpoint = resume and any(out.glob("checkpoint-*"))
            trainer.train(resume_from_checkpoint=True if checkpoint else None)
            self.model_ = trainer.model
            history = list(trainer.state.log_history)
            best = trainer.state.best_model_checkpoint
            stopped = trainer.state.global_step < trainer.state.max_steps
        finally:
            if scratch:
                shutil.rmtree(out, ignore_errors=True)
        eval_metrics = {}
        evals = [h for h in history if any(k.startswith("eval_") for k in h)]
        if evals:
            key = f"eval_{self.config.metric}"
            chosen = evals[-1]
            if best is not None:
                chosen = (max if self._higher_is_better() else min)(
                    (h for h in evals if key in h), key=lambda h: h[key], default=evals[-1]
                )
            eval_metrics = {k[5:]: v for k, v in chosen.items() if k.startswith("eval_")}
        trainable, total = _count_parameters(self.model_)
        return FitResult(
            train_loss=self._mean_loss(probe),
            initial_loss=initial_loss,
            eval_metrics=eval_metrics,
            history=history,
            trainable_params=trainable,
            total_params=total,
            stopped_early=stopped,
            best_checkpoint=best,
        )

    def _augmented(self, train: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.config.augment:
            return train
        augment = augmenters.get(self.config.augment)
        field = self.task.text_fields[0]
        import random

        rng = random.Random(self.config.seed)
        extra = [
            {**r, field: augment(r[field], rng)}
            for _ in range(self.config.augment_copies)
            for r in train
        ]
        return train + extra

    def _higher_is_better(self) -> bool:
        if self.config.metric == "loss" or self.head_ != "seq_cls":
            return False
        return metrics.get(self.config.metric).higher_is_better

    def _class_weights(self, train: list[dict[str, Any]]) -> list[float] | None:
        setting = self.config.class_weights
        if setting is None or self.head_ != "seq_cls":
            return None
        labels = self.task.labels
        if setting == "balanced":
            counts = {label: 0 for label in labels}
            for record in train:
                counts[record[self.task.label_field]] += 1
            return [len(train) / (len(labels) * max(counts[label], 1)) for label in labels]
        unknown = set(setting) - set(labels)
        if unknown:
            raise ConfigError(
                f"class_weights names unknown label(s) {sorted(unknown)}; labels are {labels}."
            )
        return [float(setting.get(label, 1.0)) for label in labels]

    def _compute_metrics(self, prediction: Any) -> dict[str, float]:
        from promptkit.metrics import ClassificationBatch

        spec = metrics.get(self.config.metric if self.config.metric != "loss" else "accuracy")
        batch = ClassificationBatch(
            np.asarray(prediction.label_ids).astype(np.int64).ravel(),
            np.asarray(prediction.predictions).astype(np.int64).ravel(),
            list(self.task.labels),
        )
        return {spec.name: spec.compute(batch)}

    def _mean_loss(self, rows: list[dict[str, Any]]) -> float:
        """Mean loss on a fixed probe set, measured the same way before and after training."""
        import torch

        collate = self._collator()
        self.model_.eval()
        losses = []
        with torch.inference_mode():
            for start in range(0, len(rows), self.config.batch_size):
                batch = collate(rows[start : start + self.config.batch_size])
                losses.append(float(self.model_(**batch).loss))
        self.model_.train()
        return sum(losses) / max(len(losses), 1)

    # ---- prediction ---------------------------------------------------------------------------

    def _predict(self, records: list[dict[str, Any]]) -> list[Prediction]:
        import torch

        rows = self._encode(records, with_targets=False)
        order = length_sorted(rows, lambda r: len(r["input_ids"]))
        results: list[Prediction | None] = [None] * len(rows)
        self.model_.eval()
        with torch.inference_mode():
            for start in range(0, len(order), self.config.batch_size):
                indices = order[start : start + self.config.batch_size]
                batch = [rows[i] for i in indices]
                for i, prediction in zip(indices, self._predict_batch(batch), strict=True):
                    results[i] = prediction
        return [r for r in results if r is not None]

    def _predict_batch(self, batch: list[dict[str, Any]]) -> list[Prediction]:
        import torch

        if self.head_ == "seq_cls":
            inputs = self.tokenizer_.pad(batch, return_tensors="pt")
            probs = torch.softmax(self.model_(**inputs).logits.float(), dim=-1).tolist()
            labels = self.task.labels
            return [
                Prediction(
                    label=labels[max(range(len(p)), key=p.__getitem__)],
                    scores=dict(zip(labels, p, strict=True)),
                )
                for p in probs
            ]
        padding_side = self.tokenizer_.padding_side
        if self.head_ == "causal_lm":
            self.tokenizer_.padding_side = "left"  # generation continues from the right edge
        try:
            inputs = self.tokenizer_.pad(batch, return_tensors="pt")
        finally:
            self.tokenizer_.padding_side = padding_side
        output = self.model_.generate(
            **inputs,
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer_.pad_token_id,
        )
        if self.head_ == "causal_lm":
            output = output[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer_.batch_decode(output, skip_special_tokens=True)
        return [Prediction(text=t.strip()) for t in texts]

    # ---- persistence --------------------------------------------------------------------------

    def _save(self, directory: Path) -> None:
        self._save_model(directory)
        self.tokenizer_.save_pretrained(directory / "tokenizer")
        (directory / "training.json").write_text(json.dumps({"head": self.head_}))

    def _load(self, directory: Path, manifest: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        self.tokenizer_ = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
        if self.tokenizer_.pad_token is None:
            self.tokenizer_.pad_token = self.tokenizer_.eos_token
        self.head_ = json.loads((directory / "training.json").read_text())["head"]
        self.model_ = self._load_model(directory, manifest)
        self.model_.eval()


class FullFineTune(FineTuneAdapter):
    """Every weight trains. Works for any Hugging Face model, or one built from its config."""

    name = "full"


def _argmax(logits: Any, labels: Any) -> Any:
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def _count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


__all__ = ["FineTuneAdapter", "FullFineTune", "TrainingConfig", "is_main_process"]

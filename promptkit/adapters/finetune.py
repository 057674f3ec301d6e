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

from pydantic import Field, field_validator

from promptkit import models
from promptkit.adapters.base import Adapter, AdapterConfig, FitResult, Prediction
from promptkit.adapters.heads import ClassificationHead, GenerationOptions, Head, heads
from promptkit.adapters.pairs import PairTraining
from promptkit.augment import augmenters
from promptkit.devices import model_device, resolve_device, resolve_dtype, to_device
from promptkit.errors import ConfigError
from promptkit.metrics import metrics

HeadName = Literal["auto", "seq_cls", "causal_lm", "seq2seq_lm"]
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
    group_by_length: bool = Field(
        True,
        description="Batch training rows of similar length (shuffled groups), so that padding "
        "wastes little compute; False draws batches uniformly at random.",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    dropout: float | None = Field(None, ge=0, lt=1, description="Override the model's dropout.")
    class_weights: Literal["balanced"] | dict[str, float] | None = Field(
        None, description="'balanced' or a weight per label, for imbalanced classes."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement."
    )
    metric: str | None = Field(
        None,
        description="Metric for early stopping and the best model; default 'accuracy' for a "
        "classification head, 'loss' for generation.",
    )
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N steps (else per epoch)."
    )
    logging_steps: int = Field(20, ge=1)
    augment: str | None = Field(None, description="Data augmenter name, e.g. 'word_dropout'.")
    augment_copies: int = Field(1, ge=1, le=10)
    head: HeadName = Field(
        "auto", description="Model head; 'auto' picks from task and architecture."
    )
    from_scratch: bool = Field(False, description="Initialize weights randomly from the config.")
    report_to: list[str] = Field(default_factory=list, description="e.g. ['tensorboard'].")
    save_checkpoints: bool = Field(True, description="Keep checkpoints in the run directory.")
    max_new_tokens: int = Field(32, ge=1, description="Generation length at prediction time.")
    min_new_tokens: int = Field(
        1, ge=0, description="Tokens generated before the end of sequence may end an answer."
    )
    hard_negatives: int = Field(
        3,
        ge=0,
        le=32,
        description="Retrieval and rerank tasks: mined hard negatives per training query.",
    )
    negatives_from: Any = Field(
        None,
        exclude=True,
        description="Retrieval and rerank tasks: a KnowledgeBase (or its directory) to mine hard "
        "negatives from; unset, the other training passages.",
    )
    negatives_embedder: str = Field(
        "minilm", description="Rerank tasks: the embedder that ranks candidates for mining."
    )
    stop: list[str] = Field(default_factory=list, description="Cut generated text here.")
    runtime: Literal["torch", "onnx"] = Field(
        "torch",
        description="What predicts: torch, or onnxruntime for an artifact written by "
        "adapter.export(..., format='onnx') (classifiers; promptkit[onnx]).",
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None and value != "loss" and value not in metrics:
            raise ValueError(metrics.unknown_message(value))
        return value

    @field_validator("augment")
    @classmethod
    def _known_augmenter(cls, value: str | None) -> str | None:
        if value is not None and value not in augmenters:
            raise ValueError(augmenters.unknown_message(value))
        return value


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class FineTuneAdapter(Adapter):
    """Shared Trainer pipeline. Subclasses change what trains through :meth:`_wrap_model`.

    What differs between a classifier, a causal LM and a seq2seq LM lives in ``self.head_``, a
    :class:`~promptkit.adapters.heads.Head` strategy chosen from the task and the architecture.
    """

    Config: ClassVar[type[AdapterConfig]] = TrainingConfig
    config: TrainingConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.model_: Any = None
        self.tokenizer_: Any = None
        self.head_: Head | None = None
        self.pairs_: PairTraining | None = None  # retrieval and rerank tasks
        self.onnx_file_: Path = Path()  # runtime "onnx": the exported model and its check
        self.reference_: dict[str, Any] = {}

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

    def _pair_lora(self) -> dict[str, Any] | None:
        """LoRA settings for a retrieval or rerank model; None trains every weight."""
        return None

    def _state_bytes(self) -> int:
        if self.config.runtime == "onnx":
            return self.onnx_file_.stat().st_size
        if self.pairs_ is not None:
            return self.pairs_.state_bytes()
        return sum(t.numel() * t.element_size() for t in self._saved_tensors().values())

    # ---- model construction -------------------------------------------------------------------

    def _make_head(self, name: str | None = None) -> Head:
        if name is None:
            name = self.config.head
            if name == "auto":
                kind = self.task.kind == "classification"
                name = "seq_cls" if kind else models.architecture_head(self.config.model or "")
        head = heads.get(name)(self.task, self.tokenizer_, self.config.max_length)
        head.check_metric(self._metric(head))
        return head

    def _metric(self, head: Head | None = None) -> str:
        return self.config.metric or (head or self.head_ or ClassificationHead).default_metric

    def _base_model(self, source: str, pretrained: bool) -> Any:
        import torch
        import transformers

        head = self.head_
        assert head is not None
        if pretrained and not self.config.from_scratch:
            model = models.load_model(
                source, head.auto_class, dtype=self.config.dtype, **head.model_kwargs()
            )
        else:
            config = transformers.AutoConfig.from_pretrained(models.resolve(source))
            for key, value in head.model_kwargs().items():
                setattr(config, key, value)
            torch.manual_seed(self.config.seed)
            auto = getattr(transformers, head.auto_class)
            model = auto.from_config(config, dtype=resolve_dtype(self.config.dtype))
        if self.config.dropout is not None:
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = self.config.dropout
        if getattr(model.config, "pad_token_id", None) is None and self.tokenizer_ is not None:
            model.config.pad_token_id = self.tokenizer_.pad_token_id
        return model.to(resolve_device(self.config.device))

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

        from promptkit.adapters.trainer import training_arguments

        if self.config.runtime == "onnx":
            raise ConfigError(
                "runtime='onnx' predicts with an exported model: fit with runtime 'torch', then "
                "adapter.export(path, format='onnx')."
            )
        if not self.config.model:
            raise ConfigError(f"The {self.name!r} adapter needs model=... (an alias, id or path).")
        if self.task.pairs:
            if self.pairs_ is None:
                self.pairs_ = PairTraining(self.task, self.config, self._pair_lora())
            return self.pairs_.fit(train, eval_data)
        if self.config.early_stopping_patience and eval_data is None:
            raise ConfigError("early_stopping_patience needs eval_data: pass it to fit().")
        if self.model_ is None:
            self.tokenizer_ = models.load_tokenizer(self.config.model)
            self.head_ = self._make_head()
            self.model_ = self._wrap_model(self._base_model(self.config.model, pretrained=True))
        head = self.head_
        assert head is not None
        metric = self._metric()
        train = self._augmented(train)
        train_rows = self._training_rows(train)
        eval_rows = head.encode(eval_data, with_targets=True) if eval_data else None
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
                metric=metric,
                has_eval=eval_rows is not None,
                higher_is_better=head.higher_is_better(metric),
                save=self.config.save_checkpoints and not scratch,
            )
            callbacks = []
            if self.config.early_stopping_patience:
                callbacks.append(EarlyStoppingCallback(self.config.early_stopping_patience))
            trainer = self._trainer_class()(
                model=self.model_,
                args=args,
                train_dataset=train_rows,
                eval_dataset=eval_rows,
                data_collator=head.collator(),
                callbacks=callbacks,
                class_weights=head.class_weights(self.config.class_weights, train),
                metrics_log=out / "metrics.jsonl",
                label_smoothing=self.config.label_smoothing,
                **(head.trainer_metrics(metric) if eval_rows else {}),
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
            key = f"eval_{metric}"
            chosen = evals[-1]
            if best is not None:
                chosen = (max if head.higher_is_better(metric) else min)(
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

    def _training_rows(self, train: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Encoded training rows (the distill adapter adds its teacher's probabilities)."""
        assert self.head_ is not None
        return self.head_.encode(train, with_targets=True)

    def _trainer_class(self) -> Any:
        from promptkit.adapters.trainer import PromptkitTrainer

        return PromptkitTrainer

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

    def _mean_loss(self, rows: list[dict[str, Any]]) -> float:
        """Mean loss on a fixed probe set, measured the same way before and after training."""
        import torch

        assert self.head_ is not None
        collate, device = self.head_.collator(), model_device(self.model_)
        self.model_.eval()
        losses = []
        with torch.inference_mode():
            for start in range(0, len(rows), self.config.batch_size):
                batch = collate(rows[start : start + self.config.batch_size])
                batch = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
                losses.append(float(self.model_(**to_device(batch, device)).loss))
        self.model_.train()
        return sum(losses) / max(len(losses), 1)

    # ---- prediction ---------------------------------------------------------------------------

    def export(
        self,
        path: str | Path,
        format: Literal["onnx"] = "onnx",
        quantize: Literal["int8"] | None = "int8",
        tolerance: float = 0.05,
    ) -> Path:
        """Write this classifier as an ONNX artifact (weights int8 per channel unless
        ``quantize=None``) that loads with ``runtime="onnx"`` and predicts with onnxruntime.

        The artifact stores sample inputs with this model's probabilities; loading it checks
        that the ONNX model gives the same within ``tolerance``. Load it with
        ``promptkit.load_adapter(path)`` or serve it with ``promptkit serve``.
        """
        from promptkit import export as onnx_export

        self._check_fitted()
        if format != "onnx":
            raise ConfigError(f"Export format {format!r} is unknown; 'onnx' is the one there is.")
        if self.config.runtime == "onnx":
            raise ConfigError("This adapter is an ONNX export already.")
        if self.task.kind != "classification" or self.head_ is None or self.head_.name != "seq_cls":
            raise ConfigError(
                "ONNX export covers classifiers (a sequence-classification head); this adapter "
                f"is a {self.task.kind} adapter. Export a knowledge base's embedder with "
                "promptkit.export.export_embedder."
            )
        exported = type(self)(self.config.model_copy(update={"runtime": "onnx"}))
        exported.tokenizer_, exported.head_ = self.tokenizer_, self.head_
        exported.fitted_, exported.fit_result_, exported.profile_ = (
            True,
            self.fit_result_,
            self.profile_,
        )
        samples = [{f: s for f in self.task.text_fields} for s in onnx_export.SAMPLES]
        reference = onnx_export.reference_outputs(self._predict, samples, tolerance)
        with tempfile.TemporaryDirectory() as scratch:
            exported.onnx_file_ = Path(scratch) / "model.onnx"
            onnx_export.export_classifier(
                self._export_model(), self.tokenizer_, exported.onnx_file_, quantize
            )
            exported.reference_ = {**reference, "quantize": quantize}
            exported.save(path)
        return Path(path)

    def _export_model(self) -> Any:
        """The torch model an export traces (PEFT adapters merge a copy first)."""
        return self.model_

    @property
    def packs_inputs(self) -> bool:
        """Whether ``predict`` packs a batch of mixed lengths into shared rows rather than
        padding it (:mod:`promptkit.adapters.packing`): a server then need not cut its batches
        into length groups."""
        head = self.head_
        return (
            isinstance(head, ClassificationHead)
            and self.pairs_ is None
            and head.packer(self.model_).usable
        )

    def _predict(self, records: list[dict[str, Any]]) -> list[Prediction]:
        if self.pairs_ is not None:
            return self.pairs_.predict(records)
        assert self.head_ is not None
        if self.model_.training:  # eval() walks every module: about 1 ms a call on MiniLM
            self.model_.eval()
        options = GenerationOptions(
            max_new_tokens=self.config.max_new_tokens,
            min_new_tokens=self.config.min_new_tokens,
            batch_size=self.config.batch_size,
            seed=self.config.seed,
            stop=list(self.config.stop),
        )
        return self.head_.predict(self.model_, records, options)

    # ---- persistence --------------------------------------------------------------------------

    def _save(self, directory: Path) -> None:
        if self.pairs_ is not None:  # a plain sentence-transformers folder in model/
            self.pairs_.save(directory)
            return
        assert self.head_ is not None
        if self.config.runtime == "onnx":
            from promptkit import export as onnx_export

            shutil.copyfile(self.onnx_file_, directory / "model.onnx")
            onnx_export.write_reference(directory, self.reference_)
        else:
            self._save_model(directory)
        self.tokenizer_.save_pretrained(directory / "tokenizer")
        (directory / "training.json").write_text(json.dumps({"head": self.head_.name}))

    def _load(self, directory: Path, manifest: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        if self.task.pairs:
            self.pairs_ = PairTraining(self.task, self.config)
            self.pairs_.load(directory)
            return
        self.tokenizer_ = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
        if self.tokenizer_.pad_token is None:
            self.tokenizer_.pad_token = self.tokenizer_.eos_token
        self.head_ = self._make_head(json.loads((directory / "training.json").read_text())["head"])
        if self.config.runtime == "onnx":
            from promptkit import export as onnx_export

            self.onnx_file_ = directory / "model.onnx"
            self.model_ = onnx_export.OnnxClassifier(self.onnx_file_)
            self.reference_ = onnx_export.read_reference(directory)
            onnx_export.check_agreement(self._predict, self.reference_, directory)
            return
        self.model_ = self._load_model(directory, manifest)
        self.model_.eval()


class FullFineTune(FineTuneAdapter):
    """Every weight trains. Works for any Hugging Face model, or one built from its config."""

    name = "full"


def _count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


__all__ = ["FineTuneAdapter", "FullFineTune", "TrainingConfig", "is_main_process"]

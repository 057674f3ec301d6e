"""The transformers ``Trainer`` as promptkit uses it: arguments from a config, weighted loss, a
JSONL metrics log. The Trainer owns the loop; promptkit only configures it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments


def training_arguments(
    config: Any, out: Path, metric: str, has_eval: bool, higher_is_better: bool, save: bool
) -> TrainingArguments:
    """Map promptkit's training settings onto ``TrainingArguments``."""
    strategy = "no"
    if has_eval:
        strategy = "steps" if config.eval_steps else "epoch"
    keep_best = has_eval and (save or bool(config.early_stopping_patience))
    save_strategy = strategy if keep_best else ("epoch" if save else "no")
    return TrainingArguments(
        output_dir=str(out),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_grad_norm=config.max_grad_norm,
        # rows are padded per batch (the heads' collators); grouping by length keeps that small
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        seed=config.seed,
        data_seed=config.seed,
        eval_strategy=strategy,
        eval_steps=config.eval_steps,
        save_strategy=save_strategy,
        save_steps=config.eval_steps or 500,
        save_total_limit=2 if save_strategy != "no" else None,
        load_best_model_at_end=keep_best,
        metric_for_best_model=metric if has_eval else None,
        greater_is_better=higher_is_better if has_eval else None,
        logging_steps=config.logging_steps,
        report_to=list(config.report_to) or "none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=config.device == "cpu",
        remove_unused_columns=False,
        disable_tqdm=False,
        save_only_model=False,
    )


class MetricsLog(TrainerCallback):
    """Append every logged dict (losses, learning rate, eval metrics) to a JSONL file, with
    ``elapsed_s``: wall seconds since training began (evaluations included; each evaluation's
    own ``eval_runtime`` is logged beside it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.began = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.began = time.perf_counter()

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if logs and state.is_world_process_zero:
            elapsed = round(time.perf_counter() - self.began, 3)
            with open(self.path, "a", encoding="utf-8") as handle:
                line = {"step": state.global_step, "elapsed_s": elapsed, **logs}
                handle.write(json.dumps(line) + "\n")


class PromptkitTrainer(Trainer):
    """``Trainer`` plus class-weighted (and label-smoothed) cross-entropy for classification."""

    def __init__(
        self,
        *args: Any,
        class_weights: list[float] | None = None,
        metrics_log: Path | None = None,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.class_weights = torch.tensor(class_weights) if class_weights else None
        self.smoothing = label_smoothing
        if metrics_log is not None:
            self.add_callback(MetricsLog(metrics_log))
        if self.class_weights is not None:
            self.label_smoother = None  # smoothing is folded into the weighted loss below

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        if self.class_weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss_fn = torch.nn.CrossEntropyLoss(
            weight=self.class_weights.to(outputs.logits.device), label_smoothing=self.smoothing
        )
        loss = loss_fn(outputs.logits.view(-1, outputs.logits.shape[-1]), labels.view(-1))
        return (loss, outputs) if return_outputs else loss


class DistillTrainer(PromptkitTrainer):
    """Knowledge distillation: ``alpha`` × KL to the teacher's probabilities at temperature T
    (× T², so its gradients keep their scale as T changes) plus ``1 - alpha`` × cross-entropy on
    the rows that carry a label (``has_label``)."""

    def __init__(self, *args: Any, temperature: float, alpha: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.temperature, self.alpha = temperature, alpha

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        import torch.nn.functional as F

        teacher = inputs.pop("teacher_probs").float()
        known = inputs.pop("has_label").bool()
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits, t = outputs.logits.float(), self.temperature
        target = F.softmax(torch.log(teacher.clamp_min(1e-8)) / t, dim=-1)
        soft = F.kl_div(F.log_softmax(logits / t, dim=-1), target, reduction="batchmean") * t * t
        loss = self.alpha * soft if known.any() else soft
        if known.any():
            weights = self.class_weights
            weight = weights.to(logits.device) if weights is not None else None
            hard = F.cross_entropy(
                logits[known], labels[known], weight=weight, label_smoothing=self.smoothing
            )
            loss = loss + (1 - self.alpha) * hard
        return (loss, outputs) if return_outputs else loss

"""The "distill" adapter: a small classifier trained on a teacher's soft labels.

The teacher is any fitted classification adapter — a fine-tuned MiniLM, a ``prompt`` adapter on an
LLM, or one over an API — or its saved directory. It labels the training records (probabilities
over the task's labels); the student learns them by KL divergence at temperature T (scaled by T²,
Hinton et al. 2015), mixed with cross-entropy on the records that carry a label:
``alpha * soft + (1 - alpha) * hard``. Records without a label are just more text to learn from.

Students are named by how they are made:

- ``"<alias>-l<k>"`` (``"minilm-l3"``): that model cut to ``k`` evenly spaced layers (6 → 3 keeps
  layers 0, 2 and 4). When the teacher is a fine-tuned classifier on the same model, the student
  starts from the teacher's own weights (its embeddings, the kept layers, its head); otherwise from
  the pretrained alias.
- anything else: a model alias, Hugging Face id or path, as ``full`` takes.

The student saves and loads like ``full``; its manifest names its teacher.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from promptkit.adapters.base import Adapter, AdapterConfig
from promptkit.adapters.finetune import FullFineTune, TrainingConfig
from promptkit.errors import ConfigError

LAYERS = re.compile(r"^(?P<base>.+)-l(?P<layers>\d+)$")


class DistillConfig(TrainingConfig):
    model: str | None = Field(None, description="Set by student; leave unset.")
    learning_rate: float = Field(1e-4, gt=0, le=1)
    teacher: Any = Field(
        None, exclude=True, description="A fitted classification adapter, or its saved directory."
    )
    teacher_name: str | None = Field(None, description="What the teacher was (recorded).")
    student: str = Field(
        "minilm-l3",
        description="'<alias>-l<k>': that model cut to k evenly spaced layers (from the "
        "teacher's weights when it is a fine-tuned classifier on the same model); or any model "
        "alias, id or path.",
    )
    temperature: float = Field(
        2.0,
        gt=0,
        description="Softmax temperature of the soft labels: above 1 softens them (a confident "
        "teacher's runner-up labels show), below 1 sharpens them (a hesitant teacher whose "
        "probabilities all sit near 1/K still teaches a clear ranking).",
    )
    alpha: float = Field(
        0.5, ge=0, le=1, description="Weight of the soft (teacher) loss; 1 - alpha on hard labels."
    )
    confident: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Learn only this share of the unlabelled records: for each label in turn, "
        "the ones the teacher gives it the highest probability, the same number per label (a "
        "teacher biased toward one label still teaches every label equally), with that label "
        "as a hard target beside the soft one. Unset: every record, soft labels only.",
    )


class DistillAdapter(FullFineTune):
    """A student classifier trained on a teacher adapter's probabilities (and any labels)."""

    name = "distill"
    Config: ClassVar[type[AdapterConfig]] = DistillConfig
    needs_labels = False
    config: DistillConfig

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.teacher_: Adapter | None = None

    @classmethod
    def create(cls, **settings: Any) -> Adapter:
        adapter = super().create(**settings)
        assert isinstance(adapter, DistillAdapter)
        teacher = adapter.config.teacher
        if isinstance(teacher, (str, Path)):
            from promptkit.adapters import load_adapter

            teacher = load_adapter(teacher)
        if teacher is not None:
            if not isinstance(teacher, Adapter) or teacher.task.kind != "classification":
                raise ConfigError("teacher= must be a classification adapter or its directory.")
            if teacher.task.labels != adapter.task.labels:
                raise ConfigError(
                    f"The teacher predicts {teacher.task.labels}; this task has "
                    f"{adapter.task.labels}. Distill with the teacher's labels."
                )
        adapter.teacher_ = teacher
        base, _ = adapter._student()
        named = f"{teacher.name}:{getattr(teacher.config, 'model', None)}" if teacher else None
        adapter.config = adapter.config.model_copy(
            update={"model": base, "teacher_name": named or adapter.config.teacher_name}
        )
        return adapter

    def _student(self) -> tuple[str, int | None]:
        """(the model the student comes from, layers to keep or None for all)."""
        found = LAYERS.match(self.config.student)
        if found and not Path(self.config.student).exists():
            return found["base"], int(found["layers"])
        return self.config.student, None

    def _fit(
        self,
        train: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None,
        *,
        resume: bool,
        run_dir: Path | None,
    ) -> Any:
        if self.teacher_ is None:
            raise ConfigError("The distill adapter needs teacher=<a fitted classifier or its dir>.")
        predictions = self.teacher_.predict(train)
        labels = self.task.labels
        if any(p.scores is None for p in predictions):
            raise ConfigError(
                f"The teacher ({self.teacher_.name}) gives labels without probabilities; distill "
                "needs a teacher that scores every label."
            )
        self.soft_ = [
            [float((p.scores or {}).get(label, 0.0)) for label in labels] for p in predictions
        ]
        self.pseudo_ = [p.label for p in predictions]
        if self.config.confident is not None:
            train = self._confident(train)
        return super()._fit(train, eval_data, resume=resume, run_dir=run_dir)

    def _confident(self, train: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Labelled records, plus the unlabelled ones ``confident`` keeps, labelled by rank."""
        field, labels = self.task.label_field, self.task.labels
        unlabelled = [i for i, r in enumerate(train) if r.get(field) not in labels]
        per_label = max(1, int(len(unlabelled) * (self.config.confident or 0) / len(labels)))
        chosen: dict[int, str] = {}
        for column, label in enumerate(labels):
            ranked = sorted(unlabelled, key=lambda i: -self.soft_[i][column])
            taken = [i for i in ranked if i not in chosen][:per_label]
            chosen.update({i: label for i in taken})
        keep = [i for i, r in enumerate(train) if r.get(field) in labels or i in chosen]
        self.soft_ = [self.soft_[i] for i in keep]
        self.pseudo_ = [chosen.get(i, self.pseudo_[i]) for i in keep]
        return [{**train[i], field: chosen[i]} if i in chosen else train[i] for i in keep]

    def _training_rows(self, train: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self.head_ is not None
        field = self.task.label_field
        labelled = [r.get(field) in self.task.labels for r in train]
        # a record without a label takes the teacher's as its row label: only the probe loss
        # reads it; the training loss uses the soft labels alone there
        records = [
            r if known else {**r, field: guess}
            for r, known, guess in zip(train, labelled, self.pseudo_, strict=True)
        ]
        rows = self.head_.encode(records, with_targets=True)
        for row, soft, known in zip(rows, self.soft_, labelled, strict=True):
            row["teacher_probs"] = soft
            row["has_label"] = int(known)
        return rows

    def _trainer_class(self) -> Any:
        from promptkit.adapters.trainer import DistillTrainer

        temperature, alpha = self.config.temperature, self.config.alpha

        def make(*args: Any, **kwargs: Any) -> Any:
            return DistillTrainer(*args, temperature=temperature, alpha=alpha, **kwargs)

        return make

    def _base_model(self, source: str, pretrained: bool) -> Any:
        base, keep = self._student()
        model = self._from_teacher(base) if keep else None
        if model is None:
            model = super()._base_model(source, pretrained)
        return cut_layers(model, keep) if keep else model

    def _load_model(self, directory: Path, manifest: dict[str, Any]) -> Any:
        return FullFineTune._base_model(self, str(directory / "model"), pretrained=True)

    def _from_teacher(self, base: str) -> Any:
        """A copy of the teacher's fine-tuned model when it is a classifier on ``base``."""
        import copy

        teacher = self.teacher_
        source = getattr(teacher, "model_", None)
        if teacher is None or source is None or getattr(teacher.config, "model", None) != base:
            return None
        if hasattr(source, "merge_and_unload"):  # LoRA and friends: fold into a copy
            return copy.deepcopy(source).merge_and_unload()
        return copy.deepcopy(source)


def cut_layers(model: Any, keep: int) -> Any:
    """``model`` with ``keep`` evenly spaced encoder layers of its own (0, 2, 4 of 6 for 3)."""
    import torch

    layers, owner, name = _encoder_layers(model)
    total = len(layers)
    if not 1 <= keep <= total:
        raise ConfigError(f"A {total}-layer model cannot keep {keep} layers.")
    chosen = sorted({round(i * total / keep) for i in range(keep)})
    setattr(owner, name, torch.nn.ModuleList([layers[i] for i in chosen]))
    model.config.num_hidden_layers = len(chosen)
    return model


def _encoder_layers(model: Any) -> tuple[Any, Any, str]:
    """(the layer list, the module holding it, its attribute) of a BERT-like or GPT-like model."""
    base = getattr(model, model.base_model_prefix, model)
    for owner_path, name in (("encoder", "layer"), ("", "layers"), ("", "h"), ("transformer", "h")):
        owner = base
        for part in filter(None, owner_path.split(".")):
            owner = getattr(owner, part, None)
        layers = getattr(owner, name, None) if owner is not None else None
        if isinstance(layers, (list,)) or hasattr(layers, "__getitem__"):
            return layers, owner, name
    raise ConfigError(
        f"Cannot find the layers of a {type(model).__name__} to cut; name a smaller model as the "
        "student instead."
    )


__all__ = ["DistillAdapter", "DistillConfig", "cut_layers"]

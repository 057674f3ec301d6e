"""The Adapter contract: ``fit``, ``predict``, ``save``, ``load`` — shared logic lives here.

A subclass sets ``name`` and ``Config`` and implements a few hooks: ``_fit``, ``_predict``,
``_save`` and ``_load``. Validation of data, the fitted check, seeding, timing, the manifest and
atomic writes are done once, here, for every adapter.
"""

from __future__ import annotations

import os
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from promptkit.artifacts import read_manifest, write_artifact
from promptkit.config import StrictModel, validate
from promptkit.data import DataSource, Records
from promptkit.devices import DEVICE_PATTERN, Dtype
from promptkit.errors import ArtifactError, DataError, NotFittedError
from promptkit.monitoring import Profile, build_profile
from promptkit.task import Task


class AdapterConfig(StrictModel):
    """Settings every adapter shares. Subclasses add their own fields."""

    task: Task = Field(description="What to predict; see promptkit.Task.")
    model: str | None = Field(None, description="Model alias, Hugging Face id or local path.")
    batch_size: int = Field(16, ge=1, description="Examples per batch for training and prediction.")
    max_length: int = Field(128, ge=8, le=32768, description="Maximum input length in tokens.")
    seed: int = Field(0, ge=0, description="Random seed; the same seed gives the same results.")
    device: str = Field(
        "auto",
        pattern=DEVICE_PATTERN.pattern,
        description="Where the model runs: 'auto' (CUDA if present, else CPU), 'cpu', 'cuda:N'.",
    )
    dtype: Dtype = Field(
        "auto", description="Weight precision: 'auto' (float32), 'bfloat16' or 'float16'."
    )

    @field_validator("task", mode="before")
    @classmethod
    def _task_from_dict(cls, value: Any) -> Any:
        return Task.from_dict(value) if isinstance(value, dict) else value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass
class Prediction:
    """One prediction. Classification fills ``label`` and ``scores`` (a probability per label);
    generation fills ``text``; retrieval adds the ``sources`` it used."""

    label: str | None = None
    scores: dict[str, float] | None = None
    text: str | None = None
    sources: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class FitResult:
    """What ``fit`` measured. ``history`` holds one entry per logged step or evaluation."""

    train_loss: float | None = None
    initial_loss: float | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    fit_seconds: float = 0.0
    examples: int = 0
    stopped_early: bool = False
    best_checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy, torch and every CUDA device; a new head's initialization draws from
    torch even before its first use, so this runs before any model is built."""
    from transformers import set_seed

    set_seed(seed)


def _known(
    settings: dict[str, Any], model: Any, root: Path, manifest: dict[str, Any]
) -> dict[str, Any]:
    """Settings this promptkit knows; unknown ones (from a newer version) are dropped with a
    warning rather than refused, so artifacts stay loadable across minor versions."""
    unknown = sorted(set(settings) - set(model.model_fields))
    if unknown:
        warnings.warn(
            f"{root} was saved by promptkit {manifest.get('promptkit_version', '?')} with "
            f"setting(s) this version does not know: {unknown}. They are ignored.",
            stacklevel=3,
        )
    return {k: v for k, v in settings.items() if k not in unknown}


class Adapter(ABC):
    """One adaptation method bound to a model and a task.

    Parameters live in ``self.config``; learned state appears after :meth:`fit`. Adapters that do
    not train set ``trains = False``: their ``fit`` records what they need and may be skipped.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[AdapterConfig]] = AdapterConfig
    trains: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = True  # False: fit takes unlabelled records too (distill)

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config
        self.task: Task = config.task
        self.fitted_ = False
        self.fit_result_: FitResult | None = None
        self.profile_: Profile | None = None  # reference traffic for drift monitoring

    @classmethod
    def create(cls, **settings: Any) -> Adapter:
        return cls(validate(cls.Config, settings, f"settings for the {cls.name!r} adapter"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.config.model!r}, task={self.task.kind})"

    # ---- public contract ----------------------------------------------------------------------

    def fit(
        self,
        train: DataSource,
        eval_data: DataSource | None = None,
        *,
        resume: bool = False,
        run_dir: str | Path | None = None,
    ) -> FitResult:
        """Train (or, for adapters that do not train, record) on ``train``.

        ``eval_data`` drives early stopping where the adapter supports it; ``resume=True``
        continues from the last checkpoint in ``run_dir``.
        """
        records = self.task.prepare(train, require_target=self.needs_labels, name="training data")
        if self.trains and self.task.kind == "classification" and self.needs_labels:
            seen = {r[self.task.label_field] for r in records}
            if len(seen) < 2:
                raise DataError(
                    f"The training data has only one class ({sorted(seen)}); a classifier needs "
                    f"examples of at least two of {self.task.labels}."
                )
        eval_records = (
            self.task.prepare(eval_data, name="evaluation data") if eval_data is not None else None
        )
        seed_everything(self.config.seed)
        start = time.perf_counter()
        result = self._fit(
            records, eval_records, resume=resume, run_dir=Path(run_dir) if run_dir else None
        )
        result.fit_seconds = time.perf_counter() - start
        result.examples = len(records)
        self.fitted_ = True
        self.fit_result_ = result
        if not self.task.pairs:  # the reference that serving compares live traffic with
            source, reference = ("validation", eval_records) if eval_records else ("train", records)
            self.profile_ = build_profile(self, reference, source, self.config.seed)
        return result

    def build_profile(self, data: DataSource, source: str = "given data") -> Profile:
        """Record ``data`` (held-out examples, ideally) as the reference for drift monitoring;
        saved with the adapter. ``fit`` does this with its evaluation data, else training data."""
        self._check_fitted()
        records = self.task.prepare(data, require_target=False, name="reference data")
        self.profile_ = build_profile(self, records, source, self.config.seed)
        return self.profile_

    def predict(self, inputs: DataSource) -> list[Prediction]:
        """Predict for each input: strings, dicts with the task's fields, or a data file."""
        self._check_fitted()
        records = self.task.prepare(inputs, require_target=False, name="inputs")
        predictions = self._predict(records)
        if len(predictions) != len(records):  # a broken hook must not silently misalign rows
            raise RuntimeError(f"{self.name}: {len(predictions)} predictions for {len(records)}")
        return predictions

    def save(self, path: str | Path) -> Path:
        """Write the adapter as an artifact directory (atomic; the old one survives a crash)."""
        self._check_fitted()
        if int(os.environ.get("RANK", "0")) != 0:  # distributed: only rank 0 writes artifacts
            return Path(path)
        meta = {
            "template_sha256": self.task.template_obj.sha256,
            "fit": self.fit_result_.to_dict() if self.fit_result_ else None,
        }
        with write_artifact(path, kind=self.name, config=self.config.to_dict(), meta=meta) as tmp:
            (tmp / "template.j2").write_text(self.task.template_obj.source, encoding="utf-8")
            if self.profile_ is not None:
                self.profile_.save(tmp)
            self._save(tmp)
        return Path(path)

    @property
    def learns(self) -> bool:
        """Whether fitting changes predictions with the seed (so repeating it over seeds pays)."""
        return self.trains

    def clone(self, **overrides: Any) -> Adapter:
        """A new, unfitted adapter with the same settings; ``overrides`` replace some of them
        (``adapter.clone(seed=1)``)."""
        return type(self)(self.config.model_copy(update=overrides))

    def api_usage(self) -> dict[str, float] | None:
        """Tokens, HTTP calls and cost (USD, where the model spec gives prices) this adapter
        has spent on a hosted model's API so far; None for an adapter that calls no API."""
        return None

    def artifact_bytes(self) -> int:
        """About how many bytes :meth:`save` would write, measured without writing anything."""
        self._check_fitted()
        return len(self.task.template_obj.source.encode("utf-8")) + self._state_bytes()

    @classmethod
    def load(cls, path: str | Path) -> Adapter:
        """Load an adapter saved by :meth:`save`, checking every file's hash first."""
        root = Path(path)
        manifest = read_manifest(root)
        from promptkit.adapters import adapters

        adapter_cls = adapters.get(manifest["kind"]) if cls is Adapter else cls
        if adapter_cls.name != manifest["kind"]:
            raise ArtifactError(f"{root} holds a {manifest['kind']!r} adapter, not {cls.name!r}.")
        settings = _known(dict(manifest["config"]), adapter_cls.Config, root, manifest)
        task = _known(dict(settings["task"]), Task, root, manifest)
        if task.get("template"):  # format exactly as trained
            task["template"] = str((root / "template.j2").resolve())
        settings["task"] = task
        adapter = adapter_cls(validate(adapter_cls.Config, settings, f"{root} manifest config"))
        adapter._load(root, manifest)
        adapter.profile_ = Profile.load(root)
        adapter.fitted_ = True
        fit = manifest.get("meta", {}).get("fit")
        adapter.fit_result_ = FitResult(**fit) if fit else None
        return adapter

    # ---- helpers for subclasses ---------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self.trains and not self.fitted_:
            raise NotFittedError(
                f"This {self.name!r} adapter is not trained yet: call .fit(train_data) first, "
                "or load a trained one with promptkit.load_adapter(path)."
            )

    def batches(self, records: Records, size: int | None = None) -> list[Records]:
        step = size or self.config.batch_size
        return [records[i : i + step] for i in range(0, len(records), step)]

    # ---- hooks --------------------------------------------------------------------------------

    def _state_bytes(self) -> int:
        """Bytes of learned state ``_save`` writes; adapters that learn something override it."""
        return 0

    @abstractmethod
    def _fit(
        self, train: Records, eval_data: Records | None, *, resume: bool, run_dir: Path | None
    ) -> FitResult:
        """Learn from validated records and return what was measured."""

    @abstractmethod
    def _predict(self, records: Records) -> list[Prediction]:
        """One prediction per validated record, in order."""

    @abstractmethod
    def _save(self, directory: Path) -> None:
        """Write learned state into ``directory`` (the manifest is written for you)."""

    @abstractmethod
    def _load(self, directory: Path, manifest: dict[str, Any]) -> None:
        """Restore learned state written by ``_save``."""

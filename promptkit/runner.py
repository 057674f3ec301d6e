"""Run configs: YAML files that describe experiments, validated by pydantic, run end to end.

An experiment names a dataset, a task, and adapters (each a registry name plus the same settings
the Python API takes); the runner fits each adapter, compares them with the Evaluator, and writes
one report per experiment plus a combined report in the output folder.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, create_model, field_validator

from promptkit.config import StrictModel, validate
from promptkit.errors import ConfigError
from promptkit.task import Task

log = logging.getLogger("promptkit")


class KnowledgeSpec(StrictModel):
    source: str = Field(description="Folder to index, or a saved knowledge base directory.")
    embedder: str = Field("minilm")
    index: str = Field("auto")


class ExperimentConfig(StrictModel):
    name: str = Field(description="Folder name of this experiment's report.")
    data: str = Field(description="Dataset name (promptkit.datasets) or a .jsonl/.csv path.")
    task: dict[str, Any] = Field(description="kind: classification|generation, plus Task args.")
    train_split: str = "train"
    eval_split: str | None = "validation"
    test_split: str = "test"
    subsample: dict[str, int] = Field(
        default_factory=dict, description="Examples kept per split, e.g. {train: 2000}."
    )
    adapters: dict[str, dict[str, Any]] = Field(
        description="name -> {adapter: registry name, ...settings}; 'base' nests an adapter, "
        "'knowledge' names a knowledge spec key."
    )
    knowledge: dict[str, KnowledgeSpec] = Field(default_factory=dict)
    metrics: list[str] | None = None

    @field_validator("adapters", mode="before")
    @classmethod
    def _typed_adapters(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, spec in value.items():
                check_adapter_spec(key, spec)
        return value

    resamples: int = Field(1000, ge=10)
    seeds: list[int] | None = Field(
        None,
        description="Fit every trainable adapter once per seed, e.g. [0, 1, 2]; the report "
        "shows the spread over seeds and its tests use every seed.",
    )
    fit: bool = Field(True, description="Fit adapters on the train split before evaluating.")


class RunConfig(StrictModel):
    output: str = Field("runs/run", description="Folder for reports and adapters.")
    title: str = "promptkit run"
    seed: int = 0
    save_adapters: bool = False
    experiments: list[ExperimentConfig]


# ---- typed adapter settings -------------------------------------------------------------------


@functools.cache
def adapter_spec(name: str) -> type[StrictModel]:
    """The run-config form of a registered adapter's settings: its ``Config`` with
    ``adapter: <name>`` as the tag, ``task`` optional (the experiment's by default), a nested
    ``base`` spec and ``knowledge`` naming one of the experiment's knowledge bases."""
    from promptkit.adapters import adapters

    config = adapters.get(name).Config
    fields: dict[str, Any] = {
        "adapter": (Literal[name], Field(description="Registry name of the adapter.")),
        "task": (Task | None, Field(None, description="Overrides the experiment's task.")),
    }
    if "base" in config.model_fields:
        fields["base"] = (dict[str, Any] | None, Field(None, description="A nested adapter."))
    if "knowledge" in config.model_fields:
        fields["knowledge"] = (
            str | None,
            Field(None, description="Key of a knowledge base in this experiment."),
        )
    spec: type[StrictModel] = create_model(f"{name}_settings", __base__=config, **fields)
    return spec


def check_adapter_spec(key: str, spec: Any) -> dict[str, Any]:
    """Validate one adapter block (and its nested base) against its adapter's settings."""
    from promptkit.adapters import adapters

    if not isinstance(spec, dict) or not spec.get("adapter"):
        raise ConfigError(f"Adapter {key!r} needs 'adapter: <registry name>', got {spec!r}.")
    name = spec["adapter"]
    if name not in adapters:
        raise ConfigError(f"Adapter {key!r}: " + adapters.unknown_message(name))
    if isinstance(spec.get("base"), dict):
        check_adapter_spec(f"{key}.base", spec["base"])
    validate(adapter_spec(name), spec, f"settings of adapter {key!r} ({name})")
    return spec


def typed_run_config() -> type[RunConfig]:
    """``RunConfig`` whose adapter blocks are a union tagged by ``adapter``, built from the
    adapter registry, so the JSON Schema and ``config check`` see every adapter's settings."""
    from promptkit.adapters import adapters

    specs = tuple(adapter_spec(n) for n in adapters.names())
    union = Annotated[Union[specs], Field(discriminator="adapter")]  # type: ignore[valid-type]  # noqa: UP007
    experiment: Any = create_model(
        "TypedExperimentConfig", __base__=ExperimentConfig, adapters=(dict[str, union], ...)
    )
    typed: type[RunConfig] = create_model(
        "RunConfig", __base__=RunConfig, experiments=(list[experiment], ...)
    )
    return typed


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``key.path=value`` overrides, and validate it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Run config {file} does not exist.")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{file} must hold a mapping at the top level.")
    for override in overrides or []:
        apply_override(data, override)
        log.warning("override from the command line: %s", override)
    config = validate(RunConfig, data, f"run config {file}")
    return config


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``a.b.0.c=value`` in nested dicts/lists; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"Override {override!r} must look like key.path=value.")
    key, _, raw = override.partition("=")
    parts = key.strip().split(".")
    node: Any = data
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"Override {override!r}: {part!r} is not an index of a list of {len(node)}."
                )
            if last:
                node[int(part)] = yaml.safe_load(raw)
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = yaml.safe_load(raw)
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"Override {override!r}: cannot descend into {part!r}.")


def build_task(spec: dict[str, Any], records: list[dict[str, Any]] | None = None) -> Any:
    """The experiment's task; a classification task without ``labels`` takes the distinct
    labels of ``records`` (the training split)."""
    from promptkit.task import Task, infer_labels

    args = dict(spec)
    kind: str | None = args.pop("kind", None)
    if kind == "classification":
        if "labels" not in args:
            if not records:
                raise ConfigError("task.labels is missing and there is no data to infer it from.")
            args["labels"] = infer_labels(
                records, args.get("label_field", "label"), name="training split"
            )
        return Task.classification(**args)
    if kind == "generation":
        return Task.generation(**args)
    if kind == "retrieval":
        return Task.retrieval(**args)
    if kind == "rerank":
        return Task.rerank(**args)
    raise ConfigError(
        f"task.kind must be 'classification', 'generation', 'retrieval' or 'rerank', got {kind!r}."
    )


def load_splits(experiment: ExperimentConfig, seed: int) -> dict[str, list[dict[str, Any]]]:
    from promptkit import datasets
    from promptkit.data import read_records

    if experiment.data in datasets.datasets:
        source = datasets.load(experiment.data)
        splits = {name: list(source[name]) for name in source}
    else:
        splits = {experiment.test_split: read_records(experiment.data)}
    for name, size in experiment.subsample.items():
        if name in splits and size < len(splits[name]):
            rows = list(splits[name])
            random.Random(seed).shuffle(rows)
            splits[name] = rows[:size]
    return splits


def build_adapter(spec: dict[str, Any], task: Any, knowledge: dict[str, Any]) -> Any:
    from promptkit.adapters import create_adapter

    settings = dict(spec)
    name = settings.pop("adapter", None)
    if not name:
        raise ConfigError(f"Adapter spec {spec} lacks 'adapter: <registry name>'.")
    if isinstance(settings.get("base"), dict):
        settings["base"] = build_adapter(settings["base"], task, knowledge)
    if isinstance(settings.get("knowledge"), str):
        key = settings["knowledge"]
        if key not in knowledge:
            raise ConfigError(
                f"Adapter {name!r} names knowledge {key!r}; defined: {sorted(knowledge)}."
            )
        settings["knowledge"] = knowledge[key]
    if "task" not in settings and "base" not in settings:
        settings["task"] = task
    elif isinstance(settings.get("task"), dict):
        settings["task"] = build_task(settings["task"])
    return create_adapter(name, **settings)


def run(config: RunConfig, echo: Any = print) -> Path:
    """Run every experiment; returns the output folder holding report.html and report.md."""
    from promptkit.evaluation import Evaluator
    from promptkit.evaluation.combined import write_combined
    from promptkit.knowledge import KnowledgeBase

    output = Path(config.output)
    reports = []
    serving: list[str] = []
    started = time.perf_counter()
    for experiment in config.experiments:
        echo(f"== experiment {experiment.name}: {experiment.data}")
        splits = load_splits(experiment, config.seed)
        task = build_task(
            experiment.task,
            splits.get(experiment.train_split) or splits.get(experiment.test_split),
        )
        sizes = ", ".join(f"{k}={len(v)}" for k, v in splits.items())
        echo(
            f"   data: {sizes}"
            + (f" (subsampled: {experiment.subsample})" if experiment.subsample else "")
        )
        knowledge = {}
        for key, source_spec in experiment.knowledge.items():
            source = Path(source_spec.source)
            if (source / "manifest.json").is_file():
                knowledge[key] = KnowledgeBase.load(source)
            else:
                echo(f"   indexing {source} with {source_spec.embedder}")
                knowledge[key] = KnowledgeBase.build(
                    source, embedder=source_spec.embedder, index=source_spec.index
                )
        adapters = {}
        train = splits.get(experiment.train_split)
        eval_data = splits.get(experiment.eval_split) if experiment.eval_split else None
        repeated = experiment.seeds is not None and len(experiment.seeds) > 1
        if repeated and config.save_adapters:
            log.warning(
                "save_adapters: with seeds, each fit is a copy inside the comparison; "
                "no adapter is saved"
            )
        for name, spec in experiment.adapters.items():
            adapter = build_adapter(spec, task, knowledge)
            if experiment.fit and not repeated:
                if train is None:
                    raise ConfigError(
                        f"Experiment {experiment.name!r} has no split "
                        f"{experiment.train_split!r} to fit on."
                    )
                echo(f"   fitting {name} ({adapter.name})")
                result = adapter.fit(train, eval_data=eval_data if adapter.trains else None)
                echo(
                    f"   {name}: fit in {result.fit_seconds:.1f}s, "
                    f"{result.trainable_params:,} trainable parameters"
                )
            if config.save_adapters and not repeated:
                adapter.save(output / experiment.name / "adapters" / name)
            adapters[name] = adapter
        evaluator = Evaluator(
            task, metrics=experiment.metrics, resamples=experiment.resamples, seed=config.seed
        )
        doing = "fitting and evaluating" if repeated else "evaluating"
        report = evaluator.compare(
            adapters,
            splits[experiment.test_split],
            progress=functools.partial(_progress, echo, doing),
            seeds=experiment.seeds if repeated else None,
            train=train,
            eval_data=eval_data,
        )
        report.title = f"{experiment.name} — {experiment.data}"
        if experiment.subsample:
            report.notes.append(
                f"Subsampled for time: {experiment.subsample} (seed "
                f"{config.seed}); sizes used: {sizes}."
            )
        report.save(output / experiment.name)
        echo(report.table())
        reports.append(report)
        if config.save_adapters and not repeated and report.results:
            serving.append(_serve_command(report, output / experiment.name / "adapters"))
    elapsed = time.perf_counter() - started
    write_combined(reports, output, config.title, notes=[f"Wall time {elapsed:.0f} s."])
    echo(f"Reports written to {output}/report.html and {output}/report.md ({elapsed:.0f} s)")
    if serving:
        (output / "serve.txt").write_text("\n".join(serving) + "\n")
        echo("\n".join(serving))
    return output


def _serve_command(report: Any, folder: Path) -> str:
    """The command that serves the experiment's best adapter (by the report's first metric)."""
    from promptkit.metrics import metrics

    metric = report.metric_names[0]
    sign = 1 if metrics.get(metric).higher_is_better else -1
    best = max(report.results, key=lambda r: sign * r.metrics[metric].value)
    return (
        f"Best in {report.title.split(' — ')[0]}: {best.name} ({metric} "
        f"{best.metrics[metric].value:.3f}). Serve it: promptkit serve {folder / best.name}"
    )


def _progress(echo: Any, doing: str, name: str) -> None:
    echo(f"   {doing} {name}")


def schema() -> str:
    return json.dumps(typed_run_config().model_json_schema(), indent=2)

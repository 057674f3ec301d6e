"""The ``promptkit`` commands that take adapted models to production: serve, monitor, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from promptkit.cli import app, echo

# ---- serving and monitoring ------------------------------------------------------------------


@app.command()
def serve(
    paths: Annotated[
        list[Path], typer.Argument(help="Saved adapters, or run folders holding them.")
    ],
    kb: Annotated[
        list[Path] | None, typer.Option("--kb", help="Knowledge base to serve (repeatable).")
    ] = None,
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Model name for each path, in order.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface; 0.0.0.0 exposes the server.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes.")] = 1,
    threads: Annotated[
        int | None, typer.Option(help="Model threads per worker (default: cores / workers).")
    ] = None,
    lanes: Annotated[
        int, typer.Option(help="Batches computed at once, each with threads / lanes threads.")
    ] = 1,
    batching: Annotated[bool, typer.Option(help="Group concurrent requests.")] = True,
    max_batch_size: Annotated[int, typer.Option(help="Inputs per forward pass.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="Longest wait for a batch to fill.")] = 10.0,
    max_queue: Annotated[int, typer.Option(help="Waiting inputs per model before 503.")] = 512,
    log: Annotated[Path | None, typer.Option(help="Request/response log (JSON lines).")] = None,
    log_sample: Annotated[float, typer.Option(help="Share of requests logged.")] = 1.0,
    log_hash_inputs: Annotated[bool, typer.Option(help="Log sha256 of inputs, not text.")] = False,
) -> None:
    """Serve adapters (OpenAI-compatible API, /predict, metrics, drift monitor).

    Set PROMPTKIT_API_KEY to require `Authorization: Bearer <key>`.
    """
    from promptkit.serve import ServeConfig, discover
    from promptkit.serve import serve as run_server

    models: dict[str, str | Path] = dict(discover(list(paths), name))
    knowledge: dict[str, str | Path] = {path.name: path for path in kb or []}
    config = ServeConfig.model_validate(
        {
            "host": host,
            "port": port,
            "workers": workers,
            "threads": threads,
            "lanes": lanes,
            "batching": batching,
            "max_batch_size": max_batch_size,
            "max_wait_ms": max_wait_ms,
            "max_queue": max_queue,
            "log": str(log) if log else None,
            "log_sample": log_sample,
            "log_hash_inputs": log_hash_inputs,
        }
    )
    echo(
        f"serving {', '.join(models) or 'no models'}"
        + (f" and knowledge {', '.join(knowledge)}" if knowledge else "")
        + f" on http://{host}:{port} (OpenAI base URL http://{host}:{port}/v1)"
    )
    run_server(models, knowledge, config)


@app.command()
def monitor(
    log: Annotated[Path, typer.Argument(help="Request log written by promptkit serve --log.")],
    reference: Annotated[Path, typer.Option(help="The saved adapter the traffic went to.")],
    model: Annotated[str | None, typer.Option(help="Model name in the log (default: all).")] = None,
    window: Annotated[int, typer.Option(help="Requests per tested window.")] = 200,
    alpha: Annotated[float, typer.Option(help="False-alarm rate per window.")] = 0.05,
    out: Annotated[Path | None, typer.Option(help="Write an HTML page here.")] = None,
) -> None:
    """Drift report of logged traffic against an adapter's reference profile, offline."""
    from promptkit.monitoring import drift_report

    report = drift_report(log, reference, model, window, alpha)
    if out is not None:
        from promptkit.serve.page import monitor_html

        out.write_text(monitor_html({report["model"]: report}))
        echo(f"drift page written to {out}")
    echo(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2, default=str))


@app.command()
def export(
    source: Annotated[
        str, typer.Argument(help="A saved classifier adapter, or with --embedder an embedder.")
    ],
    out: Annotated[Path, typer.Option(help="Folder to write.")],
    embedder: Annotated[
        bool, typer.Option(help="Export a sentence-transformers embedder (alias or folder).")
    ] = False,
    quantize: Annotated[
        Literal["int8", "none"], typer.Option(help="Weights in int8 (per channel) or as trained.")
    ] = "int8",
) -> None:
    """Export to ONNX for onnxruntime (int8 by default), checked against the torch model."""
    chosen = None if quantize == "none" else quantize
    if embedder:
        from promptkit.export import OnnxEncoder, export_embedder

        folder = export_embedder(source, out, quantize=chosen)
        agreement = OnnxEncoder(folder).agreement
        echo(
            f"embedder written to {folder} (cosine to torch on the check samples >= "
            f"{agreement:.4f}); use it as embedder={str(folder)!r}"
        )
        return
    from promptkit.adapters import load_adapter

    adapter = load_adapter(source)
    export_to = getattr(adapter, "export", None)
    if export_to is None:
        from promptkit.errors import ConfigError

        raise ConfigError(
            f"A {adapter.name!r} adapter has no weights to export; export a "
            "fine-tuned classifier (full, lora, ...)."
        )
    export_to(out, format="onnx", quantize=chosen)
    size = (out / "model.onnx").stat().st_size / 2**20
    echo(f"classifier written to {out} ({size:.1f} MB); serve it with: promptkit serve {out}")

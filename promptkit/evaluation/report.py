"""``Report``: a terminal table, JSON, Markdown and one self-contained HTML file with plots."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptkit.artifacts import write_files
from promptkit.data import write_jsonl

if TYPE_CHECKING:
    from promptkit.evaluation.results import AdapterResult, Comparison

COST_COLUMNS = [
    ("fit_seconds", "fit s"),
    ("trainable_params", "trainable params"),
    ("predict_examples_per_second", "predict ex/s"),
    ("artifact_mb", "artifact MB"),
    ("peak_rss_mb", "peak RSS MB"),
    ("queries_per_second", "queries/s"),
    ("api_calls", "API calls"),
    ("api_prompt_tokens", "API tokens in"),
    ("api_completion_tokens", "API tokens out"),
    ("api_cost_usd", "API cost $"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


class Report:
    """Results of an evaluation or comparison. ``save(dir)`` writes every format at once."""

    def __init__(
        self,
        kind: str,
        results: list[AdapterResult],
        comparisons: list[Comparison],
        reproducibility: dict[str, Any],
        alpha: float,
        labels: list[str] | None = None,
        title: str = "promptkit evaluation",
        notes: list[str] | None = None,
    ) -> None:
        self.kind, self.results, self.comparisons = kind, results, comparisons
        self.reproducibility, self.alpha, self.labels = reproducibility, alpha, labels or []
        self.title, self.notes = title, list(notes or [])

    def __getitem__(self, name: str) -> AdapterResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"No adapter {name!r} in this report; have {[r.name for r in self.results]}")

    @property
    def metric_names(self) -> list[str]:
        names: list[str] = []
        for result in self.results:
            names += [m for m in result.metrics if m not in names]
        return names

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "kind": self.kind,
            "alpha": self.alpha,
            "labels": self.labels,
            "notes": self.notes,
            "results": {
                r.name: {
                    "metrics": {k: v.to_dict() for k, v in r.metrics.items()},
                    "costs": r.costs,
                    "per_class": r.per_class,
                    "confusion": r.confusion,
                    "config": r.config,
                    "seed_metrics": r.seed_metrics,
                }
                for r in self.results
            },
            "comparisons": [c.to_dict() for c in self.comparisons],
            "pareto_front": self.pareto_front(),
            "reproducibility": self.reproducibility,
        }

    # ---- text formats -------------------------------------------------------------------------

    def metric_rows(self) -> list[list[str]]:
        rows = []
        for result in self.results:
            row = [result.name]
            for name in self.metric_names:
                interval = result.metrics.get(name)
                row.append(
                    "–"
                    if interval is None
                    else f"{interval.value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"
                )
            rows.append(row)
        return rows

    def seed_count(self) -> int:
        return max((len(r.seed_metrics) for r in self.results), default=0)

    def seed_rows(self) -> list[list[str]]:
        """Per adapter, each metric's mean ± standard deviation over training seeds (min–max)."""
        if self.seed_count() < 2:
            return []
        rows = []
        for result in self.results:
            row = [result.name]
            for name in self.metric_names:
                values = [m[name] for m in result.seed_metrics if name in m]
                if len(values) < 2:
                    row.append("–")
                    continue
                mean = sum(values) / len(values)
                sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
                row.append(f"{mean:.3f} ± {sd:.3f} ({min(values):.3f}–{max(values):.3f})")
            rows.append(row)
        return rows

    def pareto_front(self) -> list[str]:
        """Adapters that no other adapter beats on both the primary metric (the first) and
        predict throughput, fastest first; empty when fewer than two have both figures."""
        from promptkit.evaluation.tradeoff import cost_points, pareto_front

        if not self.metric_names:
            return []
        points = cost_points(self.results, self.metric_names[0])
        return pareto_front(points) if len(points) >= 2 else []

    def cost_columns(self) -> list[tuple[str, str]]:
        return [
            (k, label)
            for k, label in COST_COLUMNS
            if any(r.costs.get(k) is not None for r in self.results)
        ]

    def table(self, full: bool = False) -> str:
        """The comparison as a terminal table (rich), with intervals and significance.

        By default it shows the first four metrics and the paired tests on the first one; the
        saved JSON, Markdown and HTML always hold everything (``full=True`` prints it all).
        """
        from rich.console import Console
        from rich.table import Table

        level = round((1 - self.alpha) * 100)
        names = self.metric_names if full else self.metric_names[:4]
        table = Table(title=f"{self.title} — {level}% bootstrap intervals")
        for column in ["adapter", *names]:
            table.add_column(column, overflow="fold")
        for row in self.metric_rows():
            table.add_row(*row[: len(names) + 1])
        buffer = io.StringIO()
        console = Console(file=buffer, width=140, force_terminal=False)
        console.print(table)
        if self.seed_rows():
            spread = Table(title=f"spread over {self.seed_count()} training seeds")
            for column in ["adapter", *names]:
                spread.add_column(column, overflow="fold")
            for row in self.seed_rows():
                spread.add_row(*row[: len(names) + 1])
            console.print(spread)
        costs = self.cost_columns()
        if costs:
            cost_table = Table(title="costs")
            for column in ["adapter", *[label for _, label in costs]]:
                cost_table.add_column(column)
            for r in self.results:
                cost_table.add_row(r.name, *[_fmt(r.costs.get(k)) for k, _ in costs])
            console.print(cost_table)
        shown = [c for c in self.comparisons if full or c.metric == self.metric_names[0]]
        if shown:
            sig = Table(title=f"paired tests (alpha {self.alpha}, uncorrected)")
            for column in self._test_header():
                sig.add_column(column)
            for c in shown:
                sig.add_row(*c.cells())
            console.print(sig)
        for note in self.notes:
            console.print(note)
        if not full and (len(names) < len(self.metric_names) or len(shown) < len(self.comparisons)):
            console.print("(all metrics and tests: report.md / report.html)")
        return buffer.getvalue()

    def _test_header(self) -> list[str]:
        difference = f"a − b [{round((1 - self.alpha) * 100)}% interval]"
        return ["a", "b", "metric", difference, "p", "test", "significant"]

    def markdown(self) -> str:
        level = round((1 - self.alpha) * 100)
        lines = [f"# {self.title}", ""]
        lines += [f"> {note}" for note in self.notes] + ([""] if self.notes else [])
        lines += [
            f"Metrics with {level}% bootstrap confidence intervals "
            f"({self.reproducibility.get('resamples')} resamples).",
            "",
        ]
        header = ["adapter", *self.metric_names]
        lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.metric_rows()]
        if self.seed_rows():
            lines += [
                "",
                f"## Spread over {self.seed_count()} training seeds (mean ± sd, min–max)",
                "",
                "| " + " | ".join(header) + " |",
                "|" + " --- |" * len(header),
            ]
            lines += ["| " + " | ".join(row) + " |" for row in self.seed_rows()]
        costs = self.cost_columns()
        if costs:
            lines += [
                "",
                "## Costs",
                "",
                "| adapter | " + " | ".join(c for _, c in costs) + " |",
                "|" + " --- |" * (len(costs) + 1),
            ]
            lines += [
                "| " + " | ".join([r.name, *[_fmt(r.costs.get(k)) for k, _ in costs]]) + " |"
                for r in self.results
            ]
            if front := self.pareto_front():
                lines += [
                    "",
                    f"Best trade-offs ({self.metric_names[0]} against predict throughput; no "
                    f"other adapter is both better and faster): {', '.join(front)}.",
                ]
        if self.comparisons:
            lines += [
                "",
                f"## Paired tests (alpha {self.alpha}, uncorrected)",
                "",
                "| " + " | ".join(self._test_header()) + " |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            lines += ["| " + " | ".join(c.cells()) + " |" for c in self.comparisons]
        lines += [
            "",
            "## Reproducibility",
            "",
            "```json",
            json.dumps(self.reproducibility, indent=2, default=str),
            "```",
            "",
        ]
        return "\n".join(lines)

    # ---- HTML ---------------------------------------------------------------------------------

    def _plots(self) -> list[tuple[str, str]]:
        """(caption, base64 PNG) for each plot."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        plots = []
        names = [r.name for r in self.results]
        shown = [m for m in self.metric_names if m not in ("log_loss", "ece")][:6]
        if shown:
            fig, ax = plt.subplots(figsize=(min(11, max(6, 0.5 * len(names) * len(shown))), 4))
            width = 0.8 / len(names)
            for i, result in enumerate(self.results):
                values = [result.metrics[m].value if m in result.metrics else np.nan for m in shown]
                lows = [
                    result.metrics[m].value - result.metrics[m].low if m in result.metrics else 0
                    for m in shown
                ]
                highs = [
                    result.metrics[m].high - result.metrics[m].value if m in result.metrics else 0
                    for m in shown
                ]
                ax.bar(
                    np.arange(len(shown)) + i * width,
                    values,
                    width,
                    label=result.name,
                    yerr=[lows, highs],
                    capsize=3,
                )
            ax.set_xticks(np.arange(len(shown)) + width * (len(names) - 1) / 2, shown)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("value")
            ax.legend(fontsize=8, ncols=min(4, len(names)))
            ax.set_title(f"Metrics with {round((1 - self.alpha) * 100)}% intervals")
            plots.append(("Metrics with confidence intervals", _png(fig)))
        for result in self.results:
            if result.confusion is None:
                continue
            matrix = np.array(result.confusion)
            fig, ax = plt.subplots(
                figsize=(2.6 + 0.3 * len(self.labels), 2.4 + 0.3 * len(self.labels))
            )
            ax.imshow(matrix, cmap="Blues")
            ax.set_xticks(range(len(self.labels)), self.labels, rotation=45, ha="right")
            ax.set_yticks(range(len(self.labels)), self.labels)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    color="white" if value > matrix.max() / 2 else "black",
                )
            ax.set_title(f"Confusion: {result.name}")
            plots.append((f"Confusion matrix — {result.name}", _png(fig)))
        if any(r.per_class for r in self.results):
            fig, ax = plt.subplots(
                figsize=(min(11, max(5, 0.6 * len(self.labels) * len(names))), 3.5)
            )
            width = 0.8 / len(names)
            for i, result in enumerate(self.results):
                ax.bar(
                    np.arange(len(self.labels)) + i * width,
                    [result.per_class.get(label, {}).get("f1", 0) for label in self.labels],
                    width,
                    label=result.name,
                )
            ax.set_xticks(np.arange(len(self.labels)) + width * (len(names) - 1) / 2, self.labels)
            ax.set_ylim(0, 1.05)
            ax.set_title("F1 per class")
            ax.legend(fontsize=8, ncols=min(4, len(names)))
            plots.append(("F1 per class", _png(fig)))
        plots += self._quality_against_recall(plt)
        if shown:
            from promptkit.evaluation.tradeoff import quality_against_cost

            drawn = quality_against_cost(self.results, self.metric_names[0], plt)
            if drawn is not None:
                plots.append(("Quality against cost, with the Pareto front", _png(drawn[0])))
        return plots

    def _quality_against_recall(self, plt: Any) -> list[tuple[str, str]]:
        """Answer quality (token F1) against context recall, one point per RAG adapter, with
        both intervals: does better retrieval buy better answers?"""
        rag = [r for r in self.results if {"context_recall", "token_f1"} <= set(r.metrics)]
        if not rag:
            return []
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for result in rag:
            x, y = result.metrics["context_recall"], result.metrics["token_f1"]
            ax.errorbar(
                x.value,
                y.value,
                xerr=[[x.value - x.low], [x.high - x.value]],
                yerr=[[y.value - y.low], [y.high - y.value]],
                fmt="o",
                capsize=3,
                label=result.name,
            )
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, max(0.1, max(r.metrics["token_f1"].high for r in rag) * 1.15))
        ax.set_xlabel("context recall (gold passage injected)")
        ax.set_ylabel("answer token F1")
        ax.legend(fontsize=8)
        ax.set_title("Answer quality against retrieval recall")
        return [("Answer quality against retrieval recall", _png(fig))]

    def section(self) -> dict[str, Any]:
        """What the HTML page shows for this report, as plain values for the page template."""
        test_header = self._test_header()
        primary = self.metric_names[0] if self.metric_names else ""
        costs = self.cost_columns()
        return {
            "title": self.title,
            "notes": self.notes,
            "level": round((1 - self.alpha) * 100),
            "alpha": self.alpha,
            "metric_header": ["adapter", *self.metric_names],
            "metric_rows": self.metric_rows(),
            "seed_header": ["adapter", *self.metric_names],
            "seed_rows": self.seed_rows(),
            "seed_count": self.seed_count(),
            "plots": self._plots(),
            "cost_header": ["adapter", *[label for _, label in costs]],
            "cost_rows": [[r.name, *[_fmt(r.costs.get(k)) for k, _ in costs]] for r in self.results]
            if costs
            else [],
            "primary_metric": primary,
            "pareto_front": self.pareto_front(),
            "test_header": test_header,
            "primary_tests": [c.cells() for c in self.comparisons if c.metric == primary],
            "other_tests": [c.cells() for c in self.comparisons if c.metric != primary],
            "reproducibility": json.dumps(self.reproducibility, indent=2, default=str),
        }

    def html(self) -> str:
        """One self-contained HTML page (plots inlined as PNG)."""
        return render_page(self.title, self.notes, [self.section()], combined=False)

    # ---- saving -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write report.json, report.md, report.html and predictions.jsonl into ``path``.

        Other files and folders there (saved adapters, other reports) are kept. The new files are
        written aside first, so a failed write (a full disk) leaves every earlier file as it was.
        """
        with write_files(
            path,
            kind="report",
            config={"title": self.title},
            meta={"adapters": [r.name for r in self.results]},
        ) as staging:
            (staging / "report.json").write_text(json.dumps(self.to_dict(), indent=2, default=str))
            (staging / "report.md").write_text(self.markdown(), encoding="utf-8")
            (staging / "report.html").write_text(self.html(), encoding="utf-8")
            write_jsonl(
                staging / "predictions.jsonl",
                ({"adapter": r.name, **row} for r in self.results for row in r.predictions),
            )
        return Path(path)


def render_page(
    title: str, notes: list[str], sections: list[dict[str, Any]], combined: bool
) -> str:
    """Render the report page template; every value is escaped by jinja2's autoescape."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    page = environment.get_template("report.html.j2")
    return page.render(title=title, notes=notes, sections=sections, combined=combined)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")

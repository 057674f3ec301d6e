"""Choosing by cost: the primary metric against predict throughput, and the adapters that no
other adapter beats on both (the Pareto front)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from promptkit.evaluation.results import AdapterResult
from promptkit.metrics import metrics

THROUGHPUT = "predict_examples_per_second"


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (quality, speed) no other point matches or beats on both and beats on one.

    Both coordinates are "higher is better". Ties on both coordinates keep every tied name.
    The result is ordered by speed, fastest first.
    """
    front = []
    for name, (quality, speed) in points.items():
        dominated = any(
            q >= quality and s >= speed and (q > quality or s > speed)
            for other, (q, s) in points.items()
            if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: -points[n][1])


def cost_points(results: Sequence[AdapterResult], metric: str) -> dict[str, tuple[float, float]]:
    """(quality, throughput) per adapter that has both, quality oriented so higher is better."""
    sign = 1.0 if metric not in metrics or metrics.get(metric).higher_is_better else -1.0
    points = {}
    for result in results:
        speed = result.costs.get(THROUGHPUT)
        if metric in result.metrics and speed and speed > 0:
            points[result.name] = (sign * result.metrics[metric].value, float(speed))
    return points


def quality_against_cost(
    results: Sequence[AdapterResult], metric: str, plt: Any
) -> tuple[Any, list[str]] | None:
    """A matplotlib figure of ``metric`` (with its interval) against predict throughput (log
    scale), marker area growing with the artifact's MB, the Pareto front joined by a line; and
    the front's names. None when fewer than two adapters have both figures."""
    points = cost_points(results, metric)
    if len(points) < 2:
        return None
    front = pareto_front(points)
    by_name = {r.name: r for r in results}
    sizes = {n: float(by_name[n].costs.get("artifact_mb") or 0.0) for n in points}
    biggest = max(sizes.values()) or 1.0
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, (_, speed) in points.items():
        value = by_name[name].metrics[metric]
        # area from 30 (no artifact: a prompt) to 600 points² (the largest artifact here)
        area = 30 + 570 * math.sqrt(sizes[name] / biggest)
        ax.errorbar(
            speed,
            value.value,
            yerr=[[value.value - value.low], [value.high - value.value]],
            fmt="none",
            ecolor="grey",
            capsize=3,
            zorder=1,
        )
        ax.scatter(
            speed,
            value.value,
            s=area,
            alpha=0.75,
            edgecolors="black" if name in front else "none",
            linewidths=1.5,
            label=f"{name} ({sizes[name]:.1f} MB)",
            zorder=2,
        )
    ordered = sorted(front, key=lambda n: points[n][1])
    ax.plot(
        [points[n][1] for n in ordered],
        [by_name[n].metrics[metric].value for n in ordered],
        "k--",
        linewidth=1,
        label="Pareto front",
        zorder=0,
    )
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 200, not 2×10²
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("predict throughput (examples/s, log scale)")
    ax.set_ylabel(metric)
    legend = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for handle in legend.legend_handles:  # legend markers one size; the plot shows MB
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([40])
    ax.set_title(f"{metric} against cost (marker area: artifact MB)")
    return fig, front

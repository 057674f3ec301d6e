"""The monitor page: per model, the latest drift tests and their p-values over time."""

from __future__ import annotations

import html
from typing import Any

WIDTH, HEIGHT = 640, 180
COLORS = {"labels_chi2": "#1f77b4", "confidence_ks": "#ff7f0e", "inputs_mmd": "#2ca02c"}


def _chart(history: list[dict[str, Any]]) -> str:
    """p-values (log scale, 1 to 1e-6) of each test per window, with the alarm threshold."""
    import math

    if not history:
        return "<p>No window tested yet: the first test runs once a window is full.</p>"

    def y(p: float) -> float:
        return HEIGHT * min(1.0, -math.log10(max(p, 1e-6)) / 6)

    step = WIDTH / max(len(history) - 1, 1)
    lines: list[str] = []
    for test in sorted({t for r in history for t in r["p_values"]}):
        points = " ".join(
            f"{i * step:.1f},{y(r['p_values'][test]):.1f}"
            for i, r in enumerate(history)
            if test in r["p_values"]
        )
        color = COLORS.get(test, "#555")
        lines.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>'
            f'<text x="{WIDTH - 4}" y="{12 + 14 * len(lines)}" text-anchor="end" '
            f'fill="{color}" font-size="12">{html.escape(test)}</text>'
        )
    threshold = y(history[-1]["threshold"])
    alarms = "".join(
        f'<rect x="{i * step - 2:.1f}" y="0" width="4" height="{HEIGHT}" '
        'fill="#d62728" opacity="0.25"/>'
        for i, r in enumerate(history)
        if r["alarm"]
    )
    return (
        f'<svg width="{WIDTH}" height="{HEIGHT + 20}" role="img" '
        'aria-label="drift p-values per window">'
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fafafa" stroke="#ccc"/>{alarms}'
        f'<line x1="0" x2="{WIDTH}" y1="{threshold:.1f}" y2="{threshold:.1f}" stroke="#d62728" '
        f'stroke-dasharray="4 3"/>{"".join(lines)}'
        f'<text x="0" y="{HEIGHT + 14}" font-size="11">p-value, top 1 to bottom 1e-6; dashed: '
        "alarm threshold; red bands: alarms</text></svg>"
    )


def monitor_html(models: dict[str, Any]) -> str:
    sections = []
    for name, state in models.items():
        drift = state.get("drift")
        status = (
            "no window tested yet"
            if not drift
            else ("ALARM: live traffic differs from the reference" if drift["alarm"] else "in line")
        )
        rows = "".join(
            f"<tr><td>{html.escape(t)}</td><td>{v['statistic']:.4g}</td>"
            f"<td>{v['p_value']:.3g}</td></tr>"
            for t, v in (drift or {}).get("tests", {}).items()
        )
        profile = state.get("profile") or {}
        sections.append(
            f"<section><h2>{html.escape(name)} <small>({html.escape(state['kind'])})</small></h2>"
            f"<p><b>{html.escape(status)}</b>. Window {state['window']['filled']} of "
            f"{state['window']['size']} inputs; {state['window']['seen']} seen. Reference: "
            f"{profile.get('examples', 0)} examples of {html.escape(str(profile.get('source')))} "
            f"data.</p><table><tr><th>test</th><th>statistic</th><th>p-value</th></tr>{rows}"
            f"</table>{_chart(state.get('history', []))}</section>"
        )
    body = "".join(sections) or "<p>No models served.</p>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>promptkit monitor</title>"
        "<style>body{font-family:sans-serif;max-width:720px;margin:2em auto}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:2px 8px}</style></head><body><h1>promptkit monitor</h1>"
        f"{body}</body></html>"
    )

"""One page for several reports: the output of ``promptkit run``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from promptkit.artifacts import write_artifact
from promptkit.evaluation.report import Report


def write_combined(
    reports: list[Report], path: Path, title: str, notes: list[str] | None = None
) -> Path:
    """Write report.html / report.md / report.json holding every report, plus the sub-folders."""
    existing = {p.name: p for p in path.iterdir() if p.is_dir()} if path.is_dir() else {}
    bodies, markdown = [], [f"# {title}", ""] + [f"> {n}" for n in notes or []] + [""]
    for report in reports:
        page = report.html()
        body = _between(page, "body")
        bodies.append(body.replace("<h1>", "<h2 class='experiment'>").replace("</h1>", "</h2>"))
        markdown.append(report.markdown().replace("# ", "## ", 1))
    style = _between(reports[0].html(), "style") if reports else ""
    head = "".join(f"<p class='note'>{n}</p>" for n in notes or [])
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>"
        f"{style} h2.experiment{{border-top:3px solid #333;padding-top:.6em;margin-top:2em}}"
        f"</style></head><body><h1>{title}</h1>{head}{''.join(bodies)}</body></html>"
    )
    with write_artifact(path, kind="run", config={"title": title}) as staging:
        for name, folder in existing.items():  # keep experiment reports and saved adapters
            folder.rename(staging / name)
        (staging / "report.html").write_text(page, encoding="utf-8")
        (staging / "report.md").write_text("\n".join(markdown), encoding="utf-8")
        (staging / "report.json").write_text(
            json.dumps(
                {"title": title, "notes": notes, "experiments": [r.to_dict() for r in reports]},
                indent=2,
                default=str,
            )
        )
    return path


def _between(page: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*)</{tag}>", page, re.DOTALL)
    return match.group(1) if match else ""

"""One page for several reports: the output of ``promptkit run``."""

from __future__ import annotations

import json
from pathlib import Path

from promptkit.artifacts import write_files
from promptkit.evaluation.report import Report, render_page


def write_combined(
    reports: list[Report], path: Path, title: str, notes: list[str] | None = None
) -> Path:
    """Write report.html / report.md / report.json holding every report into ``path``.

    The experiments' own folders (reports and saved adapters) stay where they are: only the three
    combined files and the folder's manifest are replaced, and only once all are written.
    """
    notes = list(notes or [])
    markdown = [f"# {title}", "", *[f"> {n}" for n in notes], ""]
    markdown += [report.markdown().replace("# ", "## ", 1) for report in reports]
    page = render_page(title, notes, [report.section() for report in reports], combined=True)
    summary = {"title": title, "notes": notes, "experiments": [r.to_dict() for r in reports]}
    with write_files(path, kind="run", config={"title": title}) as staging:
        (staging / "report.html").write_text(page, encoding="utf-8")
        (staging / "report.md").write_text("\n".join(markdown), encoding="utf-8")
        (staging / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    return path

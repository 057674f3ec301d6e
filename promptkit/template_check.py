"""``promptkit template check``: find template mistakes before a model ever sees the prompt.

Findings: header errors, syntax errors, variables used but not declared (undefined), declared
fields never used (unused), single-brace ``{text}`` that Jinja prints literally, verbalizer labels
outside the label set, and one word serving two labels. Each finding has a file and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from promptkit.errors import PromptkitError, TemplateError
from promptkit.templates import SINGLE_BRACE_RE, Template, parse_header

Severity = Literal["error", "warning"]
BUILTIN_VARIABLES = {"labels"}


@dataclass
class Finding:
    path: str
    line: int
    severity: Severity
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.severity} [{self.code}] {self.message}"


def _line_of(source: str, pattern: str, start_line: int = 1) -> int:
    lines = source.splitlines()
    regex = re.compile(pattern)
    for number, line in enumerate(lines[start_line - 1 :], start=start_line):
        if regex.search(line):
            return number
    return start_line


def check_template(path: str | Path, labels: Sequence[str] | None = None) -> list[Finding]:
    """All findings for one template file."""
    where = str(path)
    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [Finding(where, 1, "error", "unreadable", str(exc))]
    try:
        parse_header(source, where)
        template = Template.from_string(
            source, name=Path(path).stem, path=where, search_dirs=[Path(path).parent]
        )
    except TemplateError as exc:
        message = str(exc)
        match = re.match(rf"{re.escape(where)}:(\d+): (.*)", message, re.DOTALL)
        line, text = (int(match.group(1)), match.group(2)) if match else (1, message)
        code = "header" if "header" in text else "syntax"
        return [Finding(where, line, "error", code, text)]
    except PromptkitError as exc:
        return [Finding(where, 1, "error", "header", str(exc))]
    findings: list[Finding] = []
    body_start = template.body_line
    declared = set(template.fields) | set(template.defaults) | BUILTIN_VARIABLES
    used = template.variables
    for name in sorted(used - declared):
        findings.append(
            Finding(
                where,
                _line_of(source, rf"\b{re.escape(name)}\b", body_start),
                "error",
                "undefined",
                f"variable {name!r} is used but not declared in 'fields' or 'defaults'",
            )
        )
    for name in sorted(set(template.fields) - used):
        findings.append(
            Finding(
                where,
                _line_of(source, rf"\b{re.escape(name)}\b"),
                "warning",
                "unused",
                f"field {name!r} is declared but never used",
            )
        )
    body_lines = source.splitlines()
    for number, text in enumerate(body_lines[body_start - 1 :], start=body_start):
        stripped = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", "", text)
        for match in SINGLE_BRACE_RE.finditer(stripped):
            findings.append(
                Finding(
                    where,
                    number,
                    "error",
                    "single-brace",
                    f"'{match.group(0)}' is printed literally; write "
                    f"'{{{{ {match.group(1)} }}}}' to insert the variable",
                )
            )
    label_set = list(labels) if labels else template.labels
    if label_set:
        for label in template.verbalizer:
            if label not in label_set:
                findings.append(
                    Finding(
                        where,
                        _line_of(
                            source,
                            rf"^\s*['\"]?{re.escape(label)}"
                            rf"['\"]?\s*:",
                        ),
                        "error",
                        "verbalizer-label",
                        f"verbalizer label {label!r} is not in the label set {label_set}",
                    )
                )
    owners: dict[str, str] = {}
    for label, words in template.verbalizer.items():
        for word in words:
            key = word.strip().lower()
            if key in owners and owners[key] != label:
                findings.append(
                    Finding(
                        where,
                        _line_of(source, rf"\b{re.escape(word)}\b"),
                        "error",
                        "verbalizer-duplicate",
                        f"word {word!r} serves both {owners[key]!r} and {label!r}",
                    )
                )
            owners.setdefault(key, label)
    if template.truncate and template.truncate not in used:
        findings.append(
            Finding(
                where,
                _line_of(source, r"^truncate:"),
                "error",
                "truncate",
                f"'truncate: {template.truncate}' names a variable the body does not use",
            )
        )
    return findings


def check_paths(paths: Iterable[str | Path], labels: Sequence[str] | None = None) -> list[Finding]:
    """Findings for every ``.j2`` file in the given files and folders."""
    findings: list[Finding] = []
    for path in paths:
        target = Path(path)
        files = sorted(target.rglob("*.j2")) if target.is_dir() else [target]
        if target.is_dir() and not files:
            findings.append(Finding(str(target), 1, "warning", "empty", "no .j2 files found"))
        if not target.exists():
            findings.append(Finding(str(target), 1, "error", "missing", "no such file or folder"))
            continue
        for file in files:
            findings += check_template(file, labels)
    return findings

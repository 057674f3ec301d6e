"""Derive knowledge/python-faq from Debian's python3.11-doc (the FAQ's reStructuredText sources).

Usage: python tools/build_python_faq.py SOURCES_DIR OUT_DIR
where SOURCES_DIR is .../usr/share/doc/python3.11/html/_sources/faq from the unpacked package.

Each FAQ page becomes one Markdown file. Every answer keeps its own heading, an opaque passage id
(``### programming-12``), so the question text is not inside the indexed answer; the questions go
to ``questions.jsonl`` with the id of their answer.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROLE = re.compile(r":[a-z:]+:`(?:[^`<]*<)?~?([^`>]+)>?`")
LINK = re.compile(r"`([^`<]+?)\s*<([^`>]+)>`__?")
LITERAL = re.compile(r"``([^`]+)``")
REF = re.compile(r"`([^`]+)`_+")


def clean_inline(line: str) -> str:
    line = ROLE.sub(lambda m: f"`{m.group(1).lstrip('.!')}`", line)
    line = LINK.sub(lambda m: f"{m.group(1)} ({m.group(2)})", line)
    line = LITERAL.sub(lambda m: f"`{m.group(1)}`", line)
    line = REF.sub(lambda m: m.group(1), line)
    return line


def is_underline(line: str, char: str, text: str) -> bool:
    stripped = line.rstrip()
    return bool(stripped) and set(stripped) == {char} and len(stripped) >= len(text.strip()) > 0


def convert_body(lines: list[str]) -> str:
    out: list[str] = []
    skip_indent: int | None = None
    for line in lines:
        if skip_indent is not None:
            if line.strip() and (len(line) - len(line.lstrip())) <= skip_indent:
                skip_indent = None
            else:
                continue
        directive = re.match(r"(\s*)\.\. ([\w-]+)::\s*(.*)", line)
        if directive:
            name, arg = directive.group(2), directive.group(3)
            if name in ("code-block", "sourcecode", "doctest"):
                out.append("")
                continue
            if name in ("note", "seealso", "warning", "versionadded", "versionchanged"):
                out.append(f"{name.capitalize()}: {clean_inline(arg)}".rstrip(": "))
                continue
            skip_indent = len(directive.group(1))  # index, highlight, toctree...: drop the block
            continue
        if re.match(r"\s*\.\. _[^:]+:\s*$", line) or re.match(r"\s*\.\.\s*$", line):
            continue
        if line.rstrip().endswith("::"):
            line = line.rstrip()[:-1] if line.strip() != "::" else ""
        out.append(clean_inline(line.rstrip()))
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def split_page(path: Path) -> tuple[str, list[tuple[str, list[str]]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    title = ""
    questions: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if is_underline(nxt, "=", line) and line.strip() and not set(line.strip()) <= {"="}:
            if not title:
                title = line.strip()
            current = None  # a category heading ends the previous answer
            i += 2
            continue
        if is_underline(nxt, "-", line) and line.strip() and not set(line.strip()) <= {"-"}:
            current = []
            questions.append((line.strip(), current))
            i += 2
            continue
        if current is not None:
            current.append(line)
        i += 1
    return title, questions


def main(source: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for page in sorted(source.glob("*.rst.txt")):
        stem = page.name.removesuffix(".rst.txt")
        if stem == "index":
            continue
        title, questions = split_page(page)
        parts = [f"# {title}", ""]
        for number, (question, body) in enumerate(questions, start=1):
            passage_id = f"{stem}-{number}"
            parts += [f"### {passage_id}", "", convert_body(body), ""]
            records.append({"question": clean_inline(question), "passage_id": passage_id,
                            "file": f"{stem}.md"})
        (out / f"{stem}.md").write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
    with open(out / "questions.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(records)} questions written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

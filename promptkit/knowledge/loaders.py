"""Document loaders by file extension, and the folder scan that feeds a knowledge base.

A loader turns a file's bytes into documents (text plus metadata). Register one for a new
extension with ``loaders.register(".ext", function)``.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import html.parser
import io
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from promptkit.errors import KnowledgeBaseError
from promptkit.registry import Registry

IGNORE_FILE = ".promptkitignore"
MAX_FILE_BYTES = 50 * 1024 * 1024


@dataclass
class Document:
    """One document: its text, where it came from, and metadata for filters and citations."""

    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        payload = self.text + json.dumps(self.metadata, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


Loader = Callable[[str, str], list[tuple[str, dict[str, Any]]]]
loaders: Registry[Loader] = Registry("document loader")

FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)


def _front_matter(text: str) -> tuple[str, dict[str, Any]]:
    match = FRONT_MATTER.match(text)
    if not match:
        return text, {}
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError:
        return text, {}
    if not isinstance(meta, dict):
        return text, {}
    # keep offsets stable: blank out the header instead of cutting it
    return " " * match.end() + text[match.end() :], {str(k): v for k, v in meta.items()}


def _title(text: str) -> str | None:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip() or None
        if stripped:
            return stripped[:80]
    return None


def load_text(text: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    body, meta = _front_matter(text)
    meta.setdefault("title", _title(body) or name)
    return [(body, meta)]


class _HTMLText(html.parser.HTMLParser):
    SKIP = {"script", "style", "noscript", "template"}
    BLOCK = {
        "p",
        "div",
        "br",
        "li",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "tr",
        "section",
        "article",
        "pre",
        "blockquote",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.title: str | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.BLOCK:
            self.parts.append("\n\n")
            if tag.startswith("h") and len(tag) == 2:
                self.parts.append("#" * int(tag[1]) + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        elif tag == "title":
            self._in_title = False
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = (self.title or "") + data.strip()
        elif not self.skipping:
            self.parts.append(data)


def load_html(text: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    parser = _HTMLText()
    parser.feed(text)
    body = re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+", " ", "".join(parser.parts))).strip()
    return [(body, {"title": parser.title or _title(body) or name})]


def _table(rows: Iterable[dict[str, Any]], name: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise KnowledgeBaseError(
                f"{name}: row {number} is {type(row).__name__} {row!r:.40}, not an object with a "
                "text field."
            )
        text_key = next((k for k in ("text", "content", "body", "passage") if k in row), None)
        if text_key is None:
            raise KnowledgeBaseError(
                f"{name}: row {number} has no text column (text, content, body or passage); "
                f"columns: {sorted(row)}."
            )
        meta = {k: v for k, v in row.items() if k != text_key}
        meta.setdefault("row", number)
        out.append((str(row[text_key]), meta))
    return out


def load_jsonl(text: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise KnowledgeBaseError(f"{name}:{number}: not valid JSON ({exc.msg}).") from exc
    return _table(rows, name)


def load_csv(text: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    try:  # newline="" lets the csv module see quoted line breaks and stray carriage returns
        return _table(csv.DictReader(io.StringIO(text, newline="")), name)
    except csv.Error as exc:
        raise KnowledgeBaseError(f"{name} is not a readable CSV file ({exc}).") from exc


loaders.register(".txt", load_text)
loaders.register(".md", load_text)
loaders.register(".markdown", load_text)
loaders.register(".rst", load_text)
loaders.register(".html", load_html)
loaders.register(".htm", load_html)
loaders.register(".jsonl", load_jsonl)
loaders.register(".csv", load_csv)


def _load_pdf(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        import pypdf
    except ImportError as exc:
        raise KnowledgeBaseError(
            f"{path}: reading PDF needs pypdf: pip install 'promptkit[pdf]'."
        ) from exc
    reader = pypdf.PdfReader(str(path))
    text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
    return [(text, {"title": path.stem, "pages": len(reader.pages)})]


def _ignored(relative: str, patterns: list[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p) for p in patterns)


def scan_folder(folder: Path, strict: bool = False) -> tuple[list[Document], list[str]]:
    """Load every supported file under ``folder``. Returns documents and skipped files.

    Unreadable, binary, non-UTF-8 or oversized files are skipped (listed in one warning), or
    raise in ``strict`` mode. A symlink that leads outside the folder is always refused.
    """
    root = folder.resolve()
    if not root.is_dir():
        raise KnowledgeBaseError(f"Knowledge folder {folder} does not exist or is not a folder.")
    patterns = [IGNORE_FILE]
    ignore_file = root / IGNORE_FILE
    if ignore_file.is_file():
        patterns += [
            p.strip()
            for p in ignore_file.read_text().splitlines()
            if p.strip() and not p.startswith("#")
        ]
    documents: list[Document] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            relative = path.relative_to(root).as_posix()
            if filename.startswith(".") or _ignored(relative, patterns):
                continue
            suffix = path.suffix.lower()
            if suffix not in loaders and suffix != ".pdf":
                continue
            problem = _check_file(path, root)
            if problem is None:
                try:
                    documents += load_file(path, relative)
                    continue
                except UnicodeDecodeError:
                    problem = "not UTF-8 text"
                except KnowledgeBaseError as exc:
                    problem = str(exc)
            if strict or problem.startswith("symlink"):
                raise KnowledgeBaseError(f"{path}: {problem}.")
            skipped.append(f"{relative} ({problem})")
    if skipped:
        warnings.warn(f"Skipped {len(skipped)} file(s): {'; '.join(skipped)}", stacklevel=3)
    return documents, skipped


def _check_file(path: Path, root: Path) -> str | None:
    if path.is_symlink():
        target = path.resolve()
        if root != target and root not in target.parents:
            return f"symlink leading outside the knowledge folder, to {target}; refused"
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size > MAX_FILE_BYTES:
        return f"too large ({size} bytes; the limit is {MAX_FILE_BYTES})"
    if path.suffix.lower() != ".pdf":
        with open(path, "rb") as handle:
            if b"\x00" in handle.read(8192):
                return "binary content"
    return None


def load_file(path: Path, relative: str) -> list[Document]:
    """Documents in one file, with path, title and modification time in their metadata."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        parts = _load_pdf(path)
    else:
        text = path.read_bytes().decode("utf-8")
        parts = loaders.get(suffix)(text, relative)
    mtime = path.stat().st_mtime
    docs = []
    for index, (text, meta) in enumerate(parts):
        source = relative if len(parts) == 1 else f"{relative}#{index + 1}"
        docs.append(Document(text, source, {"path": relative, "mtime": mtime, **meta}))
    return docs

"""Jinja2 prompt templates: files with a YAML header, rendered in a sandbox, checked before use.

A template file looks like::

    {# ---
    name: sentiment
    task: classification
    description: Movie or product review polarity.
    fields: [text]
    truncate: text
    verbalizer: {negative: [terrible], positive: [great]}
    --- #}
    Review: {{ text }}
    Sentiment:

The header is a Jinja comment, so the file stays a valid template that editors highlight. Every
template renders in one ``SandboxedEnvironment`` with ``StrictUndefined``: a missing variable is an
error, and reaching for Python internals (``''.__class__``, ``lipsum.__globals__``) raises
:class:`~promptkit.errors.TemplateError` without running anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox
import yaml

from promptkit.errors import TemplateError, UnknownNameError
from promptkit.sandbox import (
    DEFAULT_MAX_OUTPUT_CHARS,
    DEFAULT_TIMEOUT,
    OutputTooLarge,
    RenderTimeout,
    SandboxEnvironment,
    render_limits,
)

HEADER_RE = re.compile(r"\A\s*\{#\s*---\s*\n(?P<yaml>.*?)\n\s*---\s*#\}[ \t]*\n?", re.DOTALL)
HEADER_KEYS = {
    "name",
    "task",
    "description",
    "fields",
    "truncate",
    "drop",
    "verbalizer",
    "few_shot",
    "version",
    "defaults",
    "labels",
    "answer_prefix",
}
TASK_KINDS = ("classification", "generation", "retrieval", "rerank")
SINGLE_BRACE_RE = re.compile(r"(?<![{\\])\{\s*([A-Za-z_]\w*)\s*\}(?!\})")


def builtin_template_dir() -> Path:
    """The template library shipped with promptkit (in the wheel, or the repository's folder)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_data" / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    return here.parent / "templates"


def search_path(extra: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """User folders first, then ``$PROMPTKIT_TEMPLATE_PATH``, then the built-in library."""
    paths = [Path(p).expanduser() for p in extra]
    env = os.environ.get("PROMPTKIT_TEMPLATE_PATH", "")
    paths += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    paths.append(builtin_template_dir())
    return paths


_ENVIRONMENTS: dict[tuple[str, ...], SandboxEnvironment] = {}


def environment(extra: Iterable[str | os.PathLike[str]] = ()) -> SandboxEnvironment:
    paths = search_path(extra)
    key = tuple(str(p) for p in paths)
    if key not in _ENVIRONMENTS:
        _ENVIRONMENTS[key] = SandboxEnvironment(paths)
    return _ENVIRONMENTS[key]


@dataclass
class Template:
    """A prompt template: metadata from the header plus a compiled, sandboxed jinja2 body."""

    name: str
    source: str
    task: str = "classification"
    description: str = ""
    fields: list[str] = field(default_factory=list)
    truncate: str | None = None
    drop: str | None = None  # a list variable whose last items go first when a prompt is too long
    verbalizer: dict[str, list[str]] = field(default_factory=dict)
    few_shot: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    answer_prefix: str = " "
    version: str = "1"
    path: str | None = None
    search_dirs: list[str] = field(default_factory=list)
    body_line: int = 1
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    timeout: float = DEFAULT_TIMEOUT
    _compiled: Any = field(default=None, init=False, repr=False, compare=False)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_string(
        cls,
        text: str,
        name: str = "<string>",
        path: str | None = None,
        search_dirs: Iterable[str | os.PathLike[str]] = (),
    ) -> Template:
        header, body_line = parse_header(text, where=path or name)
        unknown = set(header) - HEADER_KEYS
        if unknown:
            raise TemplateError(
                f"{path or name}: unknown header key(s) {sorted(unknown)}; allowed keys: "
                f"{sorted(HEADER_KEYS)}."
            )
        task = header.get("task", "classification")
        if task not in TASK_KINDS:
            raise TemplateError(
                f"{path or name}: header 'task' is {task!r}; expected one of {list(TASK_KINDS)}."
            )
        verbalizer = {str(k): _as_words(v) for k, v in (header.get("verbalizer") or {}).items()}
        template = cls(
            name=str(header.get("name", name)),
            source=text,
            task=task,
            description=str(header.get("description", "")),
            fields=[str(f) for f in header.get("fields") or []],
            truncate=header.get("truncate"),
            drop=header.get("drop"),
            verbalizer=verbalizer,
            few_shot=dict(header.get("few_shot") or {}),
            defaults=dict(header.get("defaults") or {}),
            labels=[str(label) for label in header.get("labels") or []],
            answer_prefix=str(header.get("answer_prefix", " ")),
            version=str(header.get("version", "1")),
            path=path,
            search_dirs=[str(p) for p in search_dirs],
            body_line=body_line,
        )
        template._compiled = template._compile()
        if not template.fields:
            template.fields = sorted(template.variables - set(template.defaults))
        return template

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], search_dirs: Iterable[str | os.PathLike[str]] = ()
    ) -> Template:
        file_path = Path(path)
        try:
            text = file_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"Cannot read template {file_path}: {exc}") from exc
        dirs = [file_path.parent, *search_dirs]
        return cls.from_string(text, name=file_path.stem, path=str(file_path), search_dirs=dirs)

    def _compile(self) -> jinja2.Template:
        env = environment(self.search_dirs)
        try:
            return env.from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"{self.path or self.name}:{exc.lineno}: template syntax error: {exc.message}"
            ) from exc

    # ---- introspection ------------------------------------------------------------------------

    @property
    def variables(self) -> set[str]:
        """Names the body reads from its context (found statically with ``jinja2.meta``)."""
        env = environment(self.search_dirs)
        try:
            ast = env.parse(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{self.path or self.name}:{exc.lineno}: {exc.message}") from exc
        return set(jinja2.meta.find_undeclared_variables(ast)) - set(env.globals)

    @property
    def required_fields(self) -> list[str]:
        """Variables the data must supply: the body's variables less those with defaults."""
        return sorted(self.variables - set(self.defaults) - {"labels"})

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    def check_fields(self, available: Iterable[str], where: str = "the task") -> None:
        """Raise if the template reads a variable that the data will not provide."""
        have = set(available)
        missing = [v for v in self.required_fields if v not in have]
        if missing:
            raise TemplateError(
                f"Template {self.name!r} uses variable(s) {missing} that {where} does not provide "
                f"(fields available: {sorted(have)}). Rename the fields, pass text_fields=..., or "
                "pick another template."
            )

    def label_words(self, labels: Sequence[str]) -> dict[str, list[str]]:
        """Verbalizer words per label; a label without an entry is spoken as its own name."""
        return {label: self.verbalizer.get(label) or [label.replace("_", " ")] for label in labels}

    # ---- rendering ----------------------------------------------------------------------------

    def render(self, record: Mapping[str, Any], **extra: Any) -> str:
        """Render one example. Missing variables, sandbox violations and a render past the
        limits (``max_output_chars`` characters, ``timeout`` seconds) raise TemplateError."""
        context = {**self.defaults, **record, **extra}
        try:
            with render_limits(self.max_output_chars, self.timeout):
                parts, size = [], 0
                for part in self._compiled.generate(context):
                    size += len(part)
                    if size > self.max_output_chars:
                        raise OutputTooLarge
                    parts.append(part)
            return "".join(parts).strip()
        except OutputTooLarge as exc:
            raise TemplateError(
                f"Template {self.name!r} rendered more than max_output_chars="
                f"{self.max_output_chars:,} characters and was stopped. Raise the limit if the "
                "output is meant to be that long."
            ) from exc
        except RenderTimeout as exc:
            raise TemplateError(
                f"Template {self.name!r} ran longer than timeout={self.timeout:g} s and was "
                "stopped (a loop too long?). Raise the limit if rendering is meant to take longer."
            ) from exc
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(
                f"Template {self.name!r} tried an unsafe operation and was stopped: {exc}"
            ) from exc
        except jinja2.UndefinedError as exc:
            raise TemplateError(
                f"Template {self.name!r}: {exc.message}. Fields given: {sorted(context)}."
            ) from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"Template {self.name!r} failed to render: {exc}") from exc
        except Exception as exc:  # anything a template body does wrong is a template error
            raise TemplateError(
                f"Template {self.name!r} failed to render: {type(exc).__name__}: {exc}"
            ) from exc

    def render_fitted(
        self,
        record: Mapping[str, Any],
        count_tokens: Any,
        max_tokens: int,
        stats: TruncationStats | None = None,
        **extra: Any,
    ) -> str:
        """Render within ``max_tokens``, never cutting the instruction.

        ``count_tokens`` maps text to a token count. First the items of the ``drop`` list (e.g.
        retrieved passages) go, the last-ranked first; then the ``truncate`` field is shortened
        by words, keeping its beginning, until the whole prompt fits or the field is empty.
        """
        text = self.render(record, **extra)
        if count_tokens(text) <= max_tokens:
            return text
        context = {**self.defaults, **record, **extra}
        result = text
        drop = self.drop or ""
        items = context.get(drop)
        if drop and isinstance(items, list) and items:
            kept = _most_that_fit(
                len(items),
                lambda n: self.render({**context, drop: items[:n]}),
                count_tokens,
                max_tokens,
            )
            context[drop] = items[: kept[0]] if kept else []
            result = kept[1] if kept else self.render(context)
        value = context.get(self.truncate) if self.truncate else None
        if count_tokens(result) > max_tokens and isinstance(value, str):
            words = value.split()
            fitted = _most_that_fit(
                len(words),
                lambda n: self.render({**context, self.truncate: " ".join(words[:n])}),  # type: ignore[dict-item]
                count_tokens,
                max_tokens,
            )
            result = fitted[1] if fitted else self.render({**context, self.truncate: ""})  # type: ignore[dict-item]
        if stats is not None:
            stats.record(count_tokens(text) - count_tokens(result))
        return result


def _most_that_fit(
    total: int, render: Any, count_tokens: Any, max_tokens: int
) -> tuple[int, str] | None:
    """Binary search for the most items (0..total) whose rendering fits; None if none does."""
    low, high, best = 0, total, None
    while low <= high:
        mid = (low + high) // 2
        rendered = render(mid)
        if count_tokens(rendered) <= max_tokens:
            best, low = (mid, rendered), mid + 1
        else:
            high = mid - 1
    return best


@dataclass
class TruncationStats:
    """Counts how many examples were cut, to warn once per batch rather than once per example."""

    count: int = 0
    tokens: int = 0

    def record(self, removed: int) -> None:
        self.count += 1
        self.tokens += max(removed, 0)

    def warn(self, template: str, max_tokens: int) -> None:
        if self.count:
            warnings.warn(
                f"Template {template!r}: {self.count} example(s) were longer than {max_tokens} "
                f"tokens and were fitted (items of the drop list removed, then the truncatable "
                f"field cut): {self.tokens} tokens removed in total "
                f"(mean {self.tokens / self.count:.1f}).",
                stacklevel=3,
            )
            self.count = self.tokens = 0


def _as_words(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value) and value:
        return list(value)
    raise TemplateError(f"Verbalizer entries must be a word or a list of words, got {value!r}.")


def parse_header(text: str, where: str = "<string>") -> tuple[dict[str, Any], int]:
    """Return the YAML header as a dict and the line number where the body starts."""
    match = HEADER_RE.match(text)
    if not match:
        return {}, 1
    try:
        header = yaml.safe_load(match.group("yaml")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = (mark.line + 2) if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TemplateError(f"{where}:{line}: header is not valid YAML: {problem}") from exc
    if not isinstance(header, dict):
        raise TemplateError(
            f"{where}:1: header must be a YAML mapping, got {type(header).__name__}."
        )
    return header, text[: match.end()].count("\n") + 1


def available_templates(extra: Iterable[str | os.PathLike[str]] = ()) -> dict[str, Path]:
    """Every ``.j2`` file on the search path by name; earlier folders shadow later ones."""
    found: dict[str, Path] = {}
    for folder in search_path(extra):
        if folder.is_dir():
            for file in sorted(folder.glob("*.j2")):
                found.setdefault(file.stem, file)
    return found


def load_template(
    name_or_path: str | os.PathLike[str] | Template,
    search_dirs: Iterable[str | os.PathLike[str]] = (),
) -> Template:
    """A template by name (from the search path), by file path, or passed through."""
    if isinstance(name_or_path, Template):
        return name_or_path
    dirs = list(search_dirs)
    path = Path(name_or_path)
    if path.suffix == ".j2" and path.is_file():
        return Template.from_file(path, search_dirs=dirs)
    known = available_templates(dirs)
    if str(name_or_path) in known:
        return Template.from_file(known[str(name_or_path)], search_dirs=dirs)
    import difflib

    close = difflib.get_close_matches(str(name_or_path), list(known), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(
        f"Unknown template {str(name_or_path)!r}.{hint} Known templates: "
        f"{', '.join(sorted(known))}."
        " A path to a .j2 file also works."
    )

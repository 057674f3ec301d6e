"""Token-aware chunking that follows headings, paragraphs and sentences, keeping char spans.

Every chunk is a contiguous slice ``document.text[start:end]``, so a citation can point at the
exact characters. Chunks never exceed ``max_tokens`` under the embedding model's tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from promptkit.config import StrictModel

HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$", re.MULTILINE)
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"\S+")


class ChunkingConfig(StrictModel):
    max_tokens: int = Field(256, ge=8, le=8192, description="Largest chunk, in embedder tokens.")
    overlap: int = Field(32, ge=0, description="Tokens repeated between consecutive chunks.")


@dataclass
class Chunk:
    text: str
    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)


def _pieces(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    spans, cursor = [], start
    for match in pattern.finditer(text, start, end):
        if match.start() > cursor:
            spans.append((cursor, match.start()))
        cursor = match.end()
    if cursor < end:
        spans.append((cursor, end))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def chunk_text(
    text: str,
    count_tokens: Callable[[str], int],
    config: ChunkingConfig,
    metadata: dict[str, Any] | None = None,
) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``config.max_tokens`` tokens."""
    limit, overlap = config.max_tokens, min(config.overlap, config.max_tokens // 2)
    sections = _sections(text)
    chunks: list[Chunk] = []
    for sec_start, sec_end, heading in sections:
        units = _units(text, sec_start, sec_end, count_tokens, limit)
        chunks += _pack(
            text,
            units,
            count_tokens,
            limit,
            overlap,
            {**(metadata or {}), **({"heading": heading} if heading else {})},
        )
    return chunks


def _sections(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, heading) for each heading-led section, plus any text before the first."""
    marks = [(m.start(), m.group(2)) for m in HEADING.finditer(text)]
    if not marks or marks[0][0] > 0:
        marks.insert(0, (0, None))
    out = []
    for i, (start, heading) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(text)
        if text[start:end].strip():
            out.append((start, end, heading))
    return out


def _units(
    text: str, start: int, end: int, count: Callable[[str], int], limit: int
) -> list[tuple[int, int, int]]:
    """Paragraphs, or sentences of long paragraphs, or word windows of long sentences."""
    units = []
    for p_start, p_end in _pieces(text, start, end, PARAGRAPH_BREAK):
        n = count(text[p_start:p_end])
        if n <= limit:
            units.append((p_start, p_end, n))
            continue
        for s_start, s_end in _pieces(text, p_start, p_end, SENTENCE_END):
            n = count(text[s_start:s_end])
            if n <= limit:
                units.append((s_start, s_end, n))
            else:
                units += _word_windows(text, s_start, s_end, count, limit)
    return units


def _word_windows(
    text: str, start: int, end: int, count: Callable[[str], int], limit: int
) -> list[tuple[int, int, int]]:
    words = [(m.start(), m.end()) for m in WORD.finditer(text, start, end)]
    out, i = [], 0
    while i < len(words):
        low, high = i + 1, len(words)
        best = i + 1
        while low <= high:  # the longest run of words from i that fits
            mid = (low + high) // 2
            if count(text[words[i][0] : words[mid - 1][1]]) <= limit:
                best, low = mid, mid + 1
            else:
                high = mid - 1
        a, b = words[i][0], words[best - 1][1]
        if best == i + 1 and count(text[a:b]) > limit:  # one giant "word": cut by characters
            b = a + max(1, len(text[a:b]) * limit // max(count(text[a:b]), 1))
            out.append((a, b, count(text[a:b])))
            words[i] = (b, words[i][1])
            if b >= words[i][1]:
                i += 1
            continue
        out.append((a, b, count(text[a:b])))
        i = best
    return out


def _pack(
    text: str,
    units: list[tuple[int, int, int]],
    count: Callable[[str], int],
    limit: int,
    overlap: int,
    metadata: dict[str, Any],
) -> list[Chunk]:
    chunks: list[Chunk] = []
    current: list[tuple[int, int, int]] = []

    def emit() -> None:
        a, b = _trim(text, current[0][0], current[-1][1])
        chunks.append(Chunk(text[a:b], a, b, dict(metadata)))

    for unit in units:
        candidate = [*current, unit]
        if current and count(text[candidate[0][0] : unit[1]]) > limit:
            emit()
            carried: list[tuple[int, int, int]] = []
            total = 0
            for previous in reversed(current):  # carry the tail of the last chunk as overlap
                if total + previous[2] > overlap:
                    break
                carried.insert(0, previous)
                total += previous[2]
            current = carried if count(text[(carried or [unit])[0][0] : unit[1]]) <= limit else []
            current.append(unit)
        else:
            current = candidate
    if current:
        emit()
    return chunks

"""Reading examples from lists, JSONL/CSV/TSV files, DataFrames and ``datasets.Dataset``.

Every reader returns plain ``dict`` records. Errors name the file and line of a malformed row.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from promptkit.errors import DataError

Records = list[dict[str, Any]]
DataSource = Any  # list of dicts | path | pandas.DataFrame | datasets.Dataset


def read_records(source: DataSource, *, text_field: str = "text") -> Records:
    """Turn any supported data source into a list of dict records.

    Strings in a list become ``{text_field: string}``, so ``predict(["a review"])`` works.
    """
    if (isinstance(source, (str, os.PathLike)) and not isinstance(source, str)) or (
        isinstance(source, str) and _looks_like_path(source)
    ):
        return read_file(Path(source))
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas.DataFrame
        return [dict(row) for row in source.to_dict(orient="records")]
    if hasattr(source, "column_names") and hasattr(source, "__iter__"):  # datasets.Dataset
        return [dict(row) for row in source]
    if isinstance(source, Mapping):
        raise DataError(
            "Expected a list of examples, got a single mapping. Wrap it in a list, or pass one "
            "split (for example data['train'])."
        )
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
        records: Records = []
        for index, item in enumerate(source):
            if isinstance(item, str):
                records.append({text_field: item})
            elif isinstance(item, Mapping):
                records.append(dict(item))
            else:
                raise DataError(
                    f"Example {index} is a {type(item).__name__}; expected a dict of fields or a "
                    "string."
                )
        return records
    raise DataError(
        f"Cannot read examples from a {type(source).__name__}. Pass a list of dicts, a path to a "
        ".jsonl/.csv/.tsv file, a pandas DataFrame or a datasets.Dataset."
    )


def _looks_like_path(text: str) -> bool:
    return Path(text).suffix.lower() in {".jsonl", ".json", ".csv", ".tsv"} or Path(text).exists()


def read_file(path: Path) -> Records:
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            records = _read_jsonl(path)
        elif suffix == ".json":
            records = _read_json(path)
        elif suffix in (".csv", ".tsv"):
            records = _read_delimited(path, "\t" if suffix == ".tsv" else ",")
        else:
            raise DataError(
                f"{path}: unsupported data file type {suffix!r}; use .jsonl, .json, .csv or .tsv."
            )
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    if not records:
        raise DataError(f"{path} contains no examples.")
    return records


def _read_jsonl(path: Path) -> Records:
    records = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}).") from exc
            if not isinstance(value, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object per line, got {type(value).__name__}."
                )
            records.append(value)
    return records


def _read_json(path: Path) -> Records:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}).") from exc
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DataError(f"{path}: expected a JSON list of objects.")
    return value


def _read_delimited(path: Path, delimiter: str) -> Records:
    records = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return []
        except csv.Error as exc:
            raise DataError(f"{path}:1: {exc}") from exc
        if len(set(header)) != len(header):
            raise DataError(f"{path}:1: duplicate column names in header {header}.")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise DataError(f"{path}:{reader.line_num}: {exc}") from exc
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{reader.line_num}: expected {len(header)} columns "
                    f"({delimiter.join(header)!r}), found {len(row)}."
                )
            records.append(dict(zip(header, row, strict=True)))
    return records


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

"""Cheap looks into a job's local CSV / JSON-lines files, for the validator and `ftctl plan`.

Why: a column name or a label typo otherwise passes `ftctl validate` and the queue, and
fails minutes later when the engine reads the data. Reading a header is instant, and one
streaming pass over the label column (capped by rows and by time) costs far less than the
run it saves. The engine's rules are mirrored here (tunefleet.worker.engine.data.labels):
integer-looking labels are class ids, other labels are names; strings are stripped.

The contract stays light: csv and json from the standard library only (no pandas, no
pyarrow; parquet files are not looked into).
"""

from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import dataclass, field

from tunefleet.limits import MAX_CLASSES

# A pass over a label column stops after this many rows or seconds: what it saw is still
# checked, the rest is left to the engine.
MAX_ROWS = 1_000_000
MAX_SECONDS = 5.0

READABLE_SOURCES = ("csv", "jsonl")

# An integer, or one written as a float ("3.0"), as the engine reads class ids.
_INT_RE = re.compile(r"^\s*([+-]?\d+)(?:\.0*)?\s*$")


class DataFileError(Exception):
    """The file cannot be read as its source says (the message names the file and line)."""


@dataclass
class Labels:
    """The label values of one column: each distinct value with the line it first appears
    on, the first line with an empty label, and whether the pass read the whole file."""

    first_line: dict[str, int] = field(default_factory=dict)
    empty_line: int = 0
    complete: bool = True
    rows: int = 0

    def as_ints(self) -> dict[int, int] | None:
        """{class id: first line} when every value is an integer (class ids), else None."""
        ids = [class_id(v) for v in self.first_line]
        if not ids or None in ids:
            return None
        out: dict[int, int] = {}
        for i, line in zip(ids, self.first_line.values(), strict=True):
            out.setdefault(i, line)
        return out


def class_id(text: str) -> int | None:
    """The class id a label's text writes ("3", or "3.0" as pandas writes an int column
    that held a gap), else None: the engine reads labels by the same rule."""
    m = _INT_RE.match(text)
    return int(m.group(1)) if m else None


def json_object(path: str, line: int, text: str) -> dict:
    """One JSON-lines row, which must be an object; DataFileError naming the file and line
    (the engine raises it as its own error, with the same words)."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFileError(f"{path}: line {line} is not valid JSON: {e}") from e
    if not isinstance(row, dict):
        raise DataFileError(f"{path}: line {line} is not a JSON object")
    return row


def label_key(value) -> str:
    """A raw label as the engine compares it: stripped text; 3.0 reads as 3; None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value.strip() if isinstance(value, str) else str(value)


def separator_hint(header: list[str]) -> str:
    """Why a header read as one column: the file is separated by ';' or tabs (a spreadsheet
    export in many locales), and the csv source reads commas only."""
    if len(header) == 1:
        for sep, name in ((";", "';'"), ("\t", "tabs"), ("|", "'|'")):
            if sep in header[0]:
                return (
                    f"; the header is one column: the file looks separated by {name}, and "
                    "data.source csv reads comma-separated files (save it with commas)"
                )
    return ""


def columns(path: str, source: str) -> list[str] | None:
    """The columns of a CSV file's header, or the keys of a JSON-lines file's rows (all of
    them, as the engine takes the union); None when the pass was cut short (a JSON-lines
    file so long that a key seen late cannot be ruled out)."""
    if source == "csv":
        with _open(path) as f:
            for row in csv.reader(f):
                if row:
                    return row
        return []
    keys: dict[str, None] = {}
    complete = True
    for _, row in _jsonl_rows(path):
        if row is None:
            complete = False
            break
        keys.update(dict.fromkeys(row))
    return list(keys) if complete else None


def read_labels(path: str, source: str, column: str) -> Labels:
    """One streaming pass over `column` of `path` (capped by MAX_ROWS / MAX_SECONDS)."""
    labels = Labels()
    for line, value in _column_values(path, source, column):
        if line < 0:
            labels.complete = False
            break
        labels.rows += 1
        key = label_key(value)
        if not key:
            labels.empty_line = labels.empty_line or line
        elif key not in labels.first_line:
            labels.first_line[key] = line
    return labels


def _open(path: str):
    # utf-8-sig: a byte-order mark must not become part of the first column's name.
    return open(path, newline="", encoding="utf-8-sig", errors="replace")


def _column_values(path: str, source: str, column: str):
    """(line, value) per row; a final (-1, None) when the pass stopped at a cap."""
    if source == "jsonl":
        for line, row in _jsonl_rows(path):
            if row is None:
                yield -1, None
                return
            yield line, row.get(column)
        return
    with _open(path) as f:
        reader = csv.reader(f)
        index, end, started = None, 0, time.monotonic()
        for n, row in enumerate(reader):
            start, end = end + 1, reader.line_num
            if not row:
                continue
            if index is None:
                if column not in row:
                    return
                index = row.index(column)
                continue
            if n >= MAX_ROWS or (n % 10_000 == 0 and time.monotonic() - started > MAX_SECONDS):
                yield -1, None
                return
            yield start, row[index] if index < len(row) else ""


def _jsonl_rows(path: str):
    """(line, dict) per non-blank line; (-1, None) when a cap stopped the pass."""
    started = time.monotonic()
    with _open(path) as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            if n > MAX_ROWS or (n % 10_000 == 0 and time.monotonic() - started > MAX_SECONDS):
                yield -1, None
                return
            yield n, json_object(path, n, text)


def count_classes(path: str, source: str, column: str) -> tuple[int, list[str]] | None:
    """(number of classes, names) as the engine would size the head from a train file's
    label column, or None when the file cannot tell (unreadable, no such column, capped)."""
    if source not in READABLE_SOURCES:
        return None
    try:
        labels = read_labels(path, source, column)
    except (OSError, DataFileError, csv.Error):
        return None
    if not labels.complete or not labels.first_line:
        return None
    ints = labels.as_ints()
    if ints is not None:
        n = max(ints) + 1
        if n > MAX_CLASSES:
            return None  # not class ids (years, row ids): the engine refuses them
        return n, [str(i) for i in range(n)]
    names = sorted(labels.first_line)
    return len(names), names

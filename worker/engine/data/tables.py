"""Tables: the columns of one split of a csv, jsonl, parquet or hf source, read whole."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from tunefleet.worker.engine.data.hub import load_hf_split
from tunefleet.worker.engine.data.labels import describe_row
from tunefleet.worker.engine.errors import InvalidJobInput


@dataclass
class Table:
    """Columns of one split, read whole; `where` names it in messages, and `describe(i)`
    names its row i the way an editor would find it ("line 3" of a file, header included)."""

    where: str
    columns: dict[str, Callable[[], list]]
    num_rows: int
    class_names: dict[str, list[str]] = field(default_factory=dict)
    describe: Callable[[int], str] = describe_row

    def column(self, name: str, field_name: str) -> list:
        if name not in self.columns:
            raise InvalidJobInput(
                f"{self.where}: no column {name!r} ({field_name}); available columns: "
                f"{', '.join(self.columns) or '(none)'}"
            )
        return self.columns[name]()


def _read_file_table(path: str, source: str) -> Table:
    import pandas as pd

    if not path:
        raise InvalidJobInput(f"data: no file given for a {source} source")
    if not os.path.isfile(path):
        raise InvalidJobInput(f"{path}: no such file")
    try:
        if source == "csv":
            # Everything as written: no NaN for "NA", no 007 -> 7; labels are parsed later.
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif source == "parquet":
            df = pd.read_parquet(path)
        else:
            return _read_jsonl(path)
    except InvalidJobInput:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for a bad file
        raise InvalidJobInput(f"{path}: cannot read as {source}: {e}") from e
    cols = {str(c): (lambda c=c: df[c].tolist()) for c in df.columns}
    describe = (lambda i: f"line {csv_line_of_row(path, i)}") if source == "csv" else describe_row
    return Table(where=path, columns=cols, num_rows=len(df), describe=describe)


def csv_line_of_row(path: str, i: int) -> int:
    """The 1-based line of `path` where data row `i` (0-based, after the header) starts.

    Not simply i + 2: a quoted field may span lines and blank lines are skipped (as pandas
    does). Computed only for an error message, so one more pass over the file is fine."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        end, record = 0, -1  # record -1 is the header
        for fields in reader:
            start, end = end + 1, reader.line_num
            if not fields:
                continue
            if record == i:
                return start
            record += 1
    return i + 2


def _read_jsonl(path: str) -> Table:
    rows: list[dict] = []
    lines: list[int] = []  # the line of each row (blank lines are skipped)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidJobInput(f"{path}: line {lineno} is not valid JSON: {e}") from e
            if not isinstance(row, dict):
                raise InvalidJobInput(f"{path}: line {lineno} is not a JSON object")
            rows.append(row)
            lines.append(lineno)
    names = list(dict.fromkeys(k for r in rows for k in r))
    cols = {n: (lambda n=n: [r.get(n) for r in rows]) for n in names}
    return Table(
        where=path, columns=cols, num_rows=len(rows), describe=lambda i: f"line {lines[i]}"
    )


def hf_table(ds, where: str) -> Table:
    import datasets

    def col(n):
        return lambda: list(ds[n])

    names = {n: list(f.names) for n, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    return Table(
        where=where,
        columns={n: col(n) for n in ds.column_names},
        num_rows=len(ds),
        class_names=names,
    )


def read_split(spec, which: str) -> Table:
    d = spec.data
    target = getattr(d, which)  # train | eval | test
    if d.source == "hf":
        ds, where = load_hf_split(spec, target or "train", which)
        table = hf_table(ds, where)
    else:
        table = _read_file_table(target, d.source)
    if table.num_rows == 0:
        raise InvalidJobInput(f"{table.where}: the {which} split is empty")
    return table

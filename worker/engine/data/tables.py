"""Tables: the columns of one split of a csv, jsonl, parquet or hf source, read whole."""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tunefleet.spec.data_files import DataFileError, json_object, separator_hint
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
                f"{', '.join(self.columns) or '(none)'}{separator_hint(list(self.columns))}"
            )
        return self.columns[name]()


def _read_file_table(path: str, source: str) -> Table:
    if not path:
        raise InvalidJobInput(f"data: no file given for a {source} source")
    if not os.path.isfile(path):
        raise InvalidJobInput(f"{path}: no such file")
    if source == "csv":
        return _read_csv(path)
    if source != "parquet":
        return _read_jsonl(path)
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pandas/pyarrow raise many types for a bad file
        raise InvalidJobInput(f"{path}: cannot read as {source}: {e}") from e
    cols = {str(c): (lambda c=c: df[c].tolist()) for c in df.columns}
    return Table(where=path, columns=cols, num_rows=len(df), describe=describe_row)


def _read_csv(path: str) -> Table:
    """A CSV file as written: every value a string (no NaN for "NA", no 007 -> 7; labels
    are parsed later), a UTF-8 byte order mark dropped, blank lines skipped, a repeated
    header name renamed name.1, name.2, a row with fewer fields than the header filled
    with empty values and one with more refused -- what pandas.read_csv(dtype=str,
    keep_default_na=False) gives, without importing pandas (a third of a second in every
    training process, and what a forked warm process cannot share: with pyarrow it leaves
    a thread running)."""
    end = 0  # the line the last row read ends on
    try:
        with _no_field_limit(), open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            header: list[str] | None = None
            rows: list[list[str]] = []
            lines: list[int] = []  # the line each row starts on, for messages
            for fields in reader:
                start, end = end + 1, reader.line_num
                if not fields:
                    continue  # a blank line
                if header is None:
                    header = _unique_names(fields)
                    continue
                if len(fields) > len(header):
                    raise InvalidJobInput(
                        f"{path}: cannot read as csv: line {start} has {len(fields)} fields, "
                        f"the header has {len(header)} (quote a field that holds a comma)"
                    )
                rows.append(fields)
                lines.append(start)
    except csv.Error as e:  # bad quoting: the row that starts after the last one read
        raise InvalidJobInput(
            f"{path}: cannot read as csv: the row starting on line {end + 1}: {e} (a field "
            'that holds a quote is quoted whole, its quotes doubled: "say ""hi""")'
        ) from e
    except UnicodeDecodeError as e:
        raise InvalidJobInput(f"{path}: cannot read as csv: {e}") from e
    if header is None:
        raise InvalidJobInput(f"{path}: cannot read as csv: the file is empty (no header row)")

    def column(i: int) -> Callable[[], list]:
        return lambda: [r[i] if i < len(r) else "" for r in rows]

    return Table(
        where=path,
        columns={name: column(i) for i, name in enumerate(header)},
        num_rows=len(rows),
        describe=lambda i: f"line {lines[i]}",
    )


@contextlib.contextmanager
def _no_field_limit() -> Iterator[None]:
    """csv's field limit (128 KiB by default) lifted while the engine reads: a long document
    is one field, and pandas had no limit. Process-wide state, so it is put back after:
    the spec validator (tunefleet.spec.data_files) relies on the default limit to skip a
    file with an absurd header rather than read it, in processes that run both."""
    before = csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _unique_names(names: list[str]) -> list[str]:
    """Header names as pandas gives them: an empty one is "Unnamed: <position>", and a
    repeat of x becomes x.1, x.2..."""
    seen: dict[str, int] = {}
    unique = []
    for i, name in enumerate(names):
        name = name or f"Unnamed: {i}"  # an index column written by pandas, a trailing comma
        candidate = name
        while candidate in seen:
            seen[name] += 1
            candidate = f"{name}.{seen[name]}"
        seen.setdefault(candidate, 0)
        seen.setdefault(name, 0)
        unique.append(candidate)
    return unique


def _read_jsonl(path: str) -> Table:
    """One JSON object per line, UTF-8; a byte order mark (Windows editors write one) is
    dropped, as for CSV and as the validator reads it."""
    rows: list[dict] = []
    lines: list[int] = []  # the line of each row (blank lines are skipped)
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json_object(path, lineno, line)
                except DataFileError as e:
                    raise InvalidJobInput(str(e)) from e
                rows.append(row)
                lines.append(lineno)
    except UnicodeDecodeError as e:
        raise InvalidJobInput(
            f"{path}: cannot read as jsonl: the file is not UTF-8 ({e}); save it as UTF-8"
        ) from e
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

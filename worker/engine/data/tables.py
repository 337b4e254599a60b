"""Tables: the columns of one split of a csv, jsonl, parquet or hf source, read whole."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from tunefleet.worker.engine.data.hub import load_hf_split
from tunefleet.worker.engine.errors import InvalidJobInput


@dataclass
@dataclass
class Table:
    """Columns of one split, read whole; `where` names it in messages."""

    where: str
    columns: dict[str, Callable[[], list]]
    num_rows: int
    class_names: dict[str, list[str]] = field(default_factory=dict)

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
    return Table(where=path, columns=cols, num_rows=len(df))


def _read_jsonl(path: str) -> Table:
    rows: list[dict] = []
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
    names = list(dict.fromkeys(k for r in rows for k in r))
    cols = {n: (lambda n=n: [r.get(n) for r in rows]) for n in names}
    return Table(where=path, columns=cols, num_rows=len(rows))


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

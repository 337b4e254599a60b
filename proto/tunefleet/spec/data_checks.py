"""The validator's checks against a job's data files (columns and labels), where it can see
them: local CSV / JSON-lines files that exist, with check_paths on.

Without these, `ftctl validate` passed a spec whose label_column is not in the file, or whose
data holds a label missing from model.labels, and the job failed only when it ran. Each
problem names the field, the file (and line), and what exists, with a did-you-mean.
"""

from __future__ import annotations

import csv
import difflib
import os
from collections.abc import Callable

from tunefleet.limits import clip_chars, quote
from tunefleet.spec.data_files import (
    READABLE_SOURCES,
    DataFileError,
    Labels,
    columns,
    read_labels,
    separator_hint,
)

Fail = Callable[[str, str], None]
SPLITS = ("train", "eval", "test")
# At most this many unknown labels are reported per file (a wrong column would list them all).
MAX_REPORTED = 5


def did_you_mean(word: str, options) -> str:
    # Only names of sane length are compared: difflib is quadratic in them.
    options = [str(o) for o in options if len(str(o)) <= 200]
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {quote(close[0])}?" if close else ""


def shown(items, n: int = 12) -> str:
    """The first n names, each clipped: a file's header may hold anything (a 70 MB name)."""
    items = list(items)
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(clip_chars(str(i), 80) for i in items[:n]) + more


def check_data_files(spec, fail: Fail) -> None:
    """Columns and labels of data.train / eval / test against the spec (see module doc)."""
    d = spec.data
    if d.source not in READABLE_SOURCES:
        return
    files = {s: getattr(d, s) for s in SPLITS if _readable(getattr(d, s))}
    if not files:
        return
    label_column = d.label_column or "label"
    wanted = {
        "data.text_column": d.text_column or "text",
        "data.label_column": label_column,
    }
    if d.text_pair_column:
        wanted["data.text_pair_column"] = d.text_pair_column
    found: dict[str, Labels] = {}
    missing: dict[str, list[tuple[str, str, list[str]]]] = {}  # field -> [(split, path, have)]
    for split, path in files.items():
        try:
            have = columns(path, d.source)
            if have is None:
                continue  # a JSON-lines file too long to rule out a late key
            lacks = [f for f, name in wanted.items() if name not in have]
            for f in lacks:
                missing.setdefault(f, []).append((split, path, have))
            if not lacks:
                found[split] = labels = read_labels(path, d.source, label_column)
                if labels.complete and not labels.rows:
                    fail(
                        f"data.{split}",
                        f"{path}: no rows, only the header; the {split} split is empty",
                    )
                    del found[split]
        except csv.Error:
            continue  # e.g. a field over csv's 128 KiB limit: left to the engine (pandas)
        except DataFileError as e:
            fail(f"data.{split}", str(e))
        except OSError as e:
            fail(f"data.{split}", f"cannot read {path}: {e}")
    for f, where in missing.items():
        name, have = wanted[f], where[0][2]
        default = "" if getattr(d, f.split(".")[1]) else " (the default)"
        in_files = " or ".join(f"{path} (data.{split})" for split, path, _ in where)
        whose = "its columns" if len(where) == 1 else f"the columns of {where[0][1]}"
        fail(
            f,
            f"{quote(name)}{default} is not a column of {in_files}; {whose}: "
            f"{shown(have) or '(none)'}{did_you_mean(name, have)}{separator_hint(have)}",
        )
    if "train" in found and not d.classes:
        _check_labels(spec, files, found, label_column, fail)


def _readable(path: str) -> bool:
    return bool(path) and os.path.isabs(path) and os.path.isfile(path)


def _check_labels(spec, files: dict[str, str], found: dict[str, Labels], column: str, fail):
    """Labels as the engine maps them (engine data/labels.py): every label non-empty; with
    model.labels every label one of them (names) or a class id below their count
    (integers); without, eval and test labels must be among train's."""
    model_labels = list(spec.model.labels)
    train = found["train"]
    train_ints = train.as_ints()
    _check_num_labels(spec, files["train"], train, train_ints, fail)
    for split, labels in found.items():
        where = f"{files[split]}: line {{line}}, column {quote(column)}"
        if labels.empty_line:
            fail(f"data.{split}", where.format(line=labels.empty_line) + ": the label is empty")
        unknown = []
        if train_ints is not None:
            # Class ids: model.labels' count, else model.num_labels when it is wider than
            # train's ids (a class train lacks is still a class), else train's largest + 1.
            m = spec.model
            declared = m.num_labels if m.HasField("num_labels") else 0
            size = len(model_labels) or max(max(train_ints) + 1, declared)
            what = (
                f"out of range for the {size} names in model.labels"
                if model_labels
                else f"not one of the training labels (class ids 0..{size - 1})"
            )
            # A name among class ids (a file of names beside a train file of ids) is no
            # class id at all: "out of range" would misstate it, even for a name that is in
            # model.labels.
            not_an_id = (
                f"not a class id: the labels of {files['train']} are class ids 0..{size - 1}"
                + (", which model.labels names; write ids here too" if model_labels else "")
            )
            for value, line in labels.first_line.items():
                ints = Labels({value: line}).as_ints()
                if ints is None:
                    unknown.append((value, line, not_an_id, ""))
                elif not 0 <= next(iter(ints)) < size:
                    unknown.append((value, line, what, ""))
        else:
            names = model_labels or sorted(train.first_line)
            what = (
                f"not in model.labels ({shown(names)})"
                if model_labels
                else f"not one of the training labels in {files['train']} ({shown(names)})"
            )
            known = set(names)
            for value, line in labels.first_line.items():
                if value not in known:
                    unknown.append((value, line, what, did_you_mean(value, names)))
        for value, line, what, hint in sorted(unknown, key=lambda u: u[1])[:MAX_REPORTED]:
            fail(
                f"data.{split}", f"{where.format(line=line)}: label {quote(value)} is {what}{hint}"
            )
        if len(unknown) > MAX_REPORTED:
            fail(
                f"data.{split}",
                f"{files[split]}: {len(unknown) - MAX_REPORTED} more labels unknown; is "
                f"data.label_column ({quote(column)}) the right column?",
            )


def _check_num_labels(spec, path: str, train: Labels, ints: dict[int, int] | None, fail) -> None:
    """model.num_labels (without model.labels) must hold every class of the train file."""
    m = spec.model
    if m.labels or not m.HasField("num_labels") or not train.first_line:
        return
    if ints is not None:
        top = max(ints)
        if top >= m.num_labels:
            fail(
                "model.num_labels",
                f"{m.num_labels} classes, but {path} line {ints[top]} has class id {top}; "
                f"use at least {top + 1}, or leave model.num_labels out (the data decides)",
            )
    elif len(train.first_line) > m.num_labels:
        names = sorted(train.first_line)
        fail(
            "model.num_labels",
            f"{m.num_labels} classes, but {path} has {len(names)} labels ({shown(names)}); "
            "use model.labels to name them, or leave model.num_labels out (the data decides)",
        )

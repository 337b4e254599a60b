"""Labels: how the raw values of a label column (or folder names) become class ids 0..N-1.

A label column holding integers is used as class ids (N = max + 1, or the size given by
`model.labels` / `model.num_labels`); one holding strings maps to the sorted set of train
labels, or to the order of `model.labels` when given. Eval labels must be known to train.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunefleet.limits import MAX_CLASSES
from tunefleet.spec.data_files import class_id
from tunefleet.worker.engine.errors import InvalidJobInput


@dataclass
class LabelSpace:
    """How raw label values become ids: by name (`index`) or as integers below `size`."""

    names: list[str]
    index: dict[str, int] | None = None
    size: int = 0

    def encode(self, values: Sequence, *, where: str, column: str, describe=None) -> np.ndarray:
        describe = describe or describe_row
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            if self.index is not None:
                key = _label_str(v)
                got = self.index.get(key) if key is not None else None
            else:
                got = _label_int(v)
                if got is not None and not 0 <= got < self.size:
                    got = None
            if got is None:
                raise InvalidJobInput(
                    f"{where}: {describe(i)}, column {column!r}: label {v!r} is not one of the "
                    f"training labels ({preview(self._known())})"
                )
            out[i] = got
        return out

    def _known(self) -> list:
        return list(self.index) if self.index is not None else list(range(self.size))


def _label_str(v) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip() if isinstance(v, str) else str(v)


def _label_int(v) -> int | None:
    if isinstance(v, (bool, np.bool_, int, np.integer)):
        return int(v)
    if isinstance(v, str):
        return class_id(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    return None


def describe_row(i: int) -> str:
    return f"row {i + 1}"


def preview(items: list, n: int = 10) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def build_label_space(
    values: Sequence,
    *,
    spec,
    where: str,
    column: str,
    class_names: list[str] | None = None,
    describe=None,
    as_names: bool = False,
) -> LabelSpace:
    """The train split's label space; `class_names` come from the dataset (ClassLabel, ...).

    `as_names` keeps labels as names even when they look like integers (folder names).
    """
    describe = describe or describe_row
    for i, v in enumerate(values):
        if _label_str(v) in (None, ""):
            raise InvalidJobInput(f"{where}: {describe(i)}, column {column!r}: the label is empty")
        if isinstance(v, (dict, list, tuple)):  # a nested JSON-lines field: no class name
            raise InvalidJobInput(
                f"{where}: {describe(i)}, column {column!r}: label {v!r} is a JSON "
                f"{'object' if isinstance(v, dict) else 'list'}; a label is a string or an "
                "integer class id"
            )
    model_labels = list(spec.model.labels) if not spec.data.classes else []
    as_ints = [_label_int(v) for v in values]
    if not as_names and all(x is not None for x in as_ints):
        big = next((i for i, x in enumerate(as_ints) if x >= MAX_CLASSES), None)
        if big is not None:
            raise InvalidJobInput(
                f"{where}: {describe(big)}, column {column!r}: label {values[big]!r} is "
                f"past the {MAX_CLASSES} classes a head may have; integer labels must be "
                "class ids 0..N-1 (is data.label_column the label column?)"
            )
        ints = np.asarray(as_ints, dtype=np.int64)
        if len(ints) and ints.min() < 0:
            i = int(np.argmin(ints))
            raise InvalidJobInput(
                f"{where}: {describe(i)}, column {column!r}: "
                f"label {values[i]!r} is negative; integer labels must be class ids 0..N-1"
            )
        size = int(ints.max()) + 1 if len(ints) else 0
        names = model_labels or list(class_names or [])
        if names:
            if size > len(names):
                i = int(np.argmax(ints))
                raise InvalidJobInput(
                    f"{where}: {describe(i)}, column {column!r}: "
                    f"label {values[i]} is out of range for the {len(names)} names in "
                    + ("model.labels" if model_labels else "the dataset's class list")
                )
            size = len(names)
        else:
            # model.num_labels wider than train's ids: the ids up to it are classes too
            # (one train happens to lack may be in eval or test).
            m = spec.model
            if m.HasField("num_labels") and not spec.data.classes:
                size = max(size, m.num_labels)
            names = [str(i) for i in range(size)]
        return LabelSpace(names=names, size=size)
    keys = [_label_str(v) for v in values]
    names = model_labels or sorted(set(keys))
    index = {n: i for i, n in enumerate(names)}
    if model_labels:
        for i, k in enumerate(keys):
            if k not in index:
                raise InvalidJobInput(
                    f"{where}: {describe(i)}, column {column!r}: "
                    f"label {k!r} is not in model.labels ({preview(names)})"
                )
    return LabelSpace(names=names, index=index, size=len(names))

"""Datasets for the engine: a resolved `DataSpec` in, train/validation/test datasets and a
collate out (which split plays which role: splits.py).

`load_data(spec, task)` reads every source the spec allows (csv, jsonl, parquet, hf,
torchvision, imagefolder), turns labels into ids 0..N-1, applies `data.classes` and the
`limit_*` fields, and returns a `DataBundle`. The trainer builds the DataLoaders.

One module per concern: `labels` (raw values to class ids), `tables` (csv, jsonl, parquet
columns), `hub` (Hugging Face datasets), `text` (tokenised once, dynamic padding), `images`
(decoded lazily, transforms.v2), `bundle` (`DataBundle`, what `load_data` returns).

Labels. A label column holding integers is used as class ids (N = max + 1, or the size given
by `model.labels` / `model.num_labels`); one holding strings maps to the sorted set of train
labels, or to the order of `model.labels` when given. Without `data.classes`, `model.labels`
names the data's label ids; with it, `model.labels` names the kept classes, in the order of
`data.classes` (both describe the head). Eval labels must be known to train.

Errors about the input (missing file or column, unknown label, empty split, unreadable image)
raise `InvalidJobInput` naming the file, row and column. Rows are counted from 1, the CSV
header not included.

Every dataset returned has a `labels` attribute (numpy int64, final ids) so callers can look
at the class balance or cache features without iterating the data.
"""

from __future__ import annotations

from tunefleet.worker.engine.data.bundle import DataBundle
from tunefleet.worker.engine.data.images import load_images
from tunefleet.worker.engine.data.text import load_text
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.task import Task

__all__ = ["DataBundle", "is_deterministic", "load_data"]

TEXT_SOURCES = ("csv", "jsonl", "parquet", "hf")
IMAGE_SOURCES = ("torchvision", "imagefolder")


def is_deterministic(spec) -> bool:
    """True when the train split yields the same tensors every epoch (no augmentation)."""
    return spec.data.augment in ("", "none")


def load_data(spec, task: Task) -> DataBundle:
    """Load, label, filter and prepare both splits of `spec.data` for `task`."""
    d = spec.data
    allowed = {"text": TEXT_SOURCES, "image": IMAGE_SOURCES}.get(task.kind)
    if allowed is None:
        raise ValueError(f"unknown task kind {task.kind!r}")
    if d.source not in allowed:
        raise InvalidJobInput(
            f"data.source: {d.source!r} does not suit a {task.kind} model ({', '.join(allowed)})"
        )
    if task.kind == "text" and task.tokenizer is None:
        raise ValueError("Task(kind='text') needs a tokenizer")
    bundle = load_text(spec, task) if task.kind == "text" else load_images(spec, task)
    bundle.num_workers = d.num_workers if d.HasField("num_workers") else 0
    return bundle

"""The environment check: do the files and folders a spec names exist *here*?

The validator is split in two because the machines differ (issue 15). The schema check
(tunefleet.spec.validate with check_paths=False) reads nothing but the spec and runs
everywhere: the SDK, `ftctl`, the coordinator. This check reads the disk, so its answer is
only true on the machine that asks: a worker runs it on the spec it is about to train (and
fails the attempt at once with every problem), while a client runs it as a courtesy and
downgrades "not on this machine" to a note (the path may well be the workers' path).

URLs (s3://, gs://, hf://, ...) are not checked here: the worker fetches them first and
checks the local copies (see tunefleet.worker.input_cache).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunefleet.spec import choices as C
from tunefleet.spec.data_checks import check_data_files
from tunefleet.spec.errors import FieldError
from tunefleet.spec.model_blocks import body_block_count
from tunefleet.spec.model_config import max_positions
from tunefleet.spec.paths import looks_local
from tunefleet.spec.urls import is_url
from tunefleet.v1 import spec_pb2

__all__ = ["PathField", "check_environment", "path_fields"]


@dataclass(frozen=True)
class PathField:
    """One spec field naming a file or folder (or a URL of one)."""

    path: str  # the field, e.g. "data.train"
    value: str  # as the spec has it
    folder: bool = False  # must be a folder
    folder_ok: bool = False  # a file or a folder


def path_fields(spec: spec_pb2.JobSpec) -> Iterator[PathField]:
    """Every field of `spec` that names data or a model to read (URLs included)."""
    m, d = spec.model, spec.data
    if (
        m.source == "hf"
        and m.name
        and (looks_local(m.name) or is_url(m.name))
        or m.source == "job"
        and is_url(m.name)
    ):
        yield PathField("model.name", m.name, folder=True)
    if m.checkpoint:
        yield PathField("model.checkpoint", m.checkpoint)
    if d.source in C.FILE_DATA_SOURCES:
        folder_ok = d.source == "parquet"  # a parquet dataset may be a folder of files
        for name in ("train", "eval", "test"):
            if getattr(d, name):
                yield PathField(f"data.{name}", getattr(d, name), folder_ok=folder_ok)
    if d.source in C.IMAGE_DATA_SOURCES and d.root and not d.download:
        yield PathField("data.root", d.root, folder=True)


def missing(field: PathField) -> str | None:
    """Why `field` is not usable on this machine (None: it is, or it is a URL)."""
    if is_url(field.value):
        return None
    p = Path(field.value)
    if field.folder:
        return None if p.is_dir() else "no such folder"
    if not p.exists():
        return "no such file"
    if not field.folder_ok and p.is_dir():
        return "is a folder; give a file"
    return None


def check_environment(
    spec: spec_pb2.JobSpec, *, where: str = "", model_fit: bool = False
) -> list[FieldError]:
    """Every problem of `spec` that depends on this machine's disk, each with its field.

    `where` names the machine in the messages ("worker w-abc" gives `data.train: no such
    file on worker w-abc: /data/x.csv`); empty for the classic `no such file: /data/x.csv`.
    `model_fit` also checks data.max_length and finetune.k against a local model folder's
    config: only for a spec as written (before defaults fill in a max_length the engine
    would clamp to the model).
    """
    on = f" on {where}" if where else ""
    errors = []
    for field in path_fields(spec):
        why = missing(field)
        if why is None or not Path(field.value).is_absolute():
            continue  # relative paths are the schema check's (it reports them everywhere)
        if why.startswith("is a folder"):
            errors.append(FieldError(field.path, f"{field.value} is a folder; give a file"))
        else:
            errors.append(FieldError(field.path, f"{why}{on}: {field.value}"))
    # Columns and labels of the data files that are here (header + one pass over the label
    # column; data_checks.py): a typo fails before queueing or before the engine starts.
    check_data_files(spec, lambda path, message: errors.append(FieldError(path, message)))
    if model_fit:
        errors += _model_fit(spec)
    return errors


def _model_fit(spec: spec_pb2.JobSpec) -> list[FieldError]:
    """Checks that read a local model folder's config (positions, blocks)."""
    m, d, f = spec.model, spec.data, spec.finetune
    if m.source != "hf" or is_url(m.name):
        return []
    errors = []
    if d.HasField("max_length"):
        positions = max_positions(m.name)
        if positions is not None and d.max_length > positions:
            errors.append(
                FieldError(
                    "data.max_length",
                    f"{d.max_length} is more than the {positions} positions the model "
                    f"({m.name}) has; use at most {positions}",
                )
            )
    if (f.strategy or "full") == "last_k" and f.HasField("k") and f.k >= 1:
        blocks = body_block_count(m.source, m.name)
        if blocks is not None and f.k > blocks:
            errors.append(
                FieldError(
                    "finetune.k",
                    f"{f.k} is larger than the model's {blocks} blocks ({m.name}); use at "
                    f"most {blocks}, or strategy: full",
                )
            )
    return errors

"""Make a spec's relative paths absolute against the YAML file's folder.

Hub ids (`org/model`) and relative folders look alike; a name is taken as a local path
when it exists under the base folder or is written explicitly as one (./, ../, /, ~).
A sweep's choices for these fields (and the `when` conditions naming them) resolve as the
base job's value would: each trial is the base job with one of them set.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunefleet.spec.urls import is_url
from tunefleet.v1 import spec_pb2

_EXPLICIT = ("./", "../", "/", "~", ".\\", "..\\")


def looks_local(name: str) -> bool:
    return name.startswith(_EXPLICIT) or name in (".", "..")


def _abs(value: str, base: Path) -> str:
    if not value or is_url(value):  # s3://, hf://...: read by the worker, not a path here
        return value
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).resolve())


# The fields resolve_paths may rewrite, as "section.field".
_PATH_FIELDS = frozenset(
    ("model.name", "model.checkpoint", "data.train", "data.eval", "data.test", "data.root",
     "data.name", "output.dir")
)  # fmt: skip


def resolve_paths(spec: spec_pb2.JobSpec, base_dir: str | Path) -> spec_pb2.JobSpec:
    base = Path(base_dir).resolve()
    s = _resolve_job(spec, base)
    if s.HasField("sweep"):
        _resolve_sweep(s, base)
    return s


def _resolve_sweep(s: spec_pb2.JobSpec, base: Path) -> None:
    """The sweep's choices of path fields, each resolved as the base job's value would be
    (the base's other fields, e.g. data.source, decide as they do there)."""
    base_job = spec_pb2.JobSpec()
    base_job.CopyFrom(s)
    base_job.ClearField("sweep")

    def resolved(path: str, value: str) -> str:
        section, field = path.split(".")
        job = spec_pb2.JobSpec()
        job.CopyFrom(base_job)
        setattr(getattr(job, section), field, value)
        return getattr(getattr(_resolve_job(job, base), section), field)

    for path, param in s.sweep.space.items():
        if path in _PATH_FIELDS and param.type == "choice":
            param.values[:] = [resolved(path, v) for v in param.values]
        for other, value in list(param.when.items()):
            if other in _PATH_FIELDS:
                param.when[other] = resolved(other, value)


def _resolve_job(spec: spec_pb2.JobSpec, base: Path) -> spec_pb2.JobSpec:
    s = spec_pb2.JobSpec()
    s.CopyFrom(spec)
    m = s.model
    if m.source == "hf" and m.name and (looks_local(m.name) or (base / m.name).exists()):
        m.name = _abs(m.name, base)
    m.checkpoint = _abs(m.checkpoint, base)
    d = s.data
    if d.source in ("csv", "jsonl", "parquet"):
        d.train = _abs(d.train, base)
        d.eval = _abs(d.eval, base)
        d.test = _abs(d.test, base)
    if d.source in ("torchvision", "imagefolder"):
        d.root = _abs(d.root, base)
    if d.source == "hf" and d.name and looks_local(d.name):
        d.name = _abs(d.name, base)
    s.output.dir = _abs(s.output.dir, base)
    return s

"""Make a spec's relative paths absolute against the YAML file's folder.

Hub ids (`org/model`) and relative folders look alike; a name is taken as a local path
when it exists under the base folder or is written explicitly as one (./, ../, /, ~).
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


def resolve_paths(spec: spec_pb2.JobSpec, base_dir: str | Path) -> spec_pb2.JobSpec:
    s = spec_pb2.JobSpec()
    s.CopyFrom(spec)
    base = Path(base_dir).resolve()
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

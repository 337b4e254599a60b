"""The job spec's semantics: YAML loading, path resolution, defaults, the one validator.

No torch here: the SDK, `ftctl` and the coordinator all import this.
"""

from __future__ import annotations

from pathlib import Path

from tunefleet.limits import safe_name
from tunefleet.spec import sweep
from tunefleet.spec.defaults import resolve_defaults
from tunefleet.spec.errors import FieldError, SpecError
from tunefleet.spec.parse import parse_lenient, read_yaml, spec_from_dict, spec_to_dict
from tunefleet.spec.paths import resolve_paths
from tunefleet.spec.validate import validate
from tunefleet.v1 import spec_pb2

__all__ = [
    "FieldError",
    "SpecError",
    "compresses",
    "load_job_file",
    "prepare",
    "resolve_defaults",
    "spec_from_dict",
    "spec_to_dict",
    "validate",
]


def prepare(
    spec: spec_pb2.JobSpec | dict,
    *,
    base_dir: str | Path | None = None,
    check_paths: bool = True,
    source: str | None = None,
) -> spec_pb2.JobSpec:
    """Parse, resolve paths, validate and fill defaults; raise SpecError with every problem."""
    parse_errors: list[FieldError] = []
    if not isinstance(spec, spec_pb2.JobSpec):
        spec, parse_errors = parse_lenient(spec)
    if base_dir is not None:
        spec = resolve_paths(spec, base_dir)
    errors = parse_errors + [
        e
        for e in validate(spec, check_paths=check_paths)
        # A field that failed to parse is absent; don't also call it "required".
        if not any(e.path == p.path or p.path.startswith(e.path + ".") for p in parse_errors)
    ]
    if errors:
        raise SpecError(errors, source)
    if spec.HasField("sweep"):
        # A sweep's base keeps its gaps: a default may depend on a swept field (head_only's
        # lr), so each trial's spec is resolved on its own once its values are drawn.
        return sweep.resolve(spec)
    return resolve_defaults(spec)


def load_job_file(path: str | Path, *, check_paths: bool = True) -> spec_pb2.JobSpec:
    """Read a job YAML; relative paths inside it resolve against the file's folder."""
    p = Path(path)
    data = read_yaml(p)
    if isinstance(data, dict) and "name" not in data:
        data = {**data, "name": safe_name(p.stem)}  # a file name may hold any character
    return prepare(data, base_dir=p.resolve().parent, check_paths=check_paths, source=str(p))


def compresses(spec: spec_pb2.JobSpec) -> bool:
    """Whether the job compresses its final model (prune and/or quantize)."""
    c = spec.compression
    return spec.HasField("compression") and (c.HasField("prune") or c.HasField("quantize"))

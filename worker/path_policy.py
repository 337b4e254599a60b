"""PathPolicy: which folders a job's spec may make the worker read or write.

A job spec names paths on the worker's machine (data files, model folders, checkpoints,
the output folder). Whoever may submit jobs could otherwise read any file the worker's
user can (`data.train: /home/worker/.ssh/id_rsa` shows up in an error message) or
overwrite one (`output.dir: /home/worker/.bashrc`).

`ftctl worker --allowed-root DIR` (repeatable; or $TUNEFLEET_ALLOWED_ROOTS, separated by
os.pathsep) confines every path field to those folders. Paths are compared after
`os.path.realpath`, so `..` and symlinks cannot lead out. The worker's artifacts folder is
always allowed: jobs without `output.dir` write there, and `model.source: job` reads a
model another job exported there.

With no root configured, nothing is restricted: right for one person's machine (`ftctl up`),
not for a shared worker -- the worker logs a warning at start in that case.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunefleet.v1 import spec_pb2

__all__ = ["ENV_ALLOWED_ROOTS", "PathPolicy", "PathViolation", "roots_from_env", "spec_paths"]

ENV_ALLOWED_ROOTS = "TUNEFLEET_ALLOWED_ROOTS"

log = logging.getLogger(__name__)

_EXPLICIT = ("./", "../", "/", "~", ".\\", "..\\")


@dataclass(frozen=True)
class PathViolation:
    field: str  # the spec field, e.g. "data.train"
    path: str  # as written in the spec
    resolved: str  # where it really leads

    def __str__(self) -> str:
        via = "" if self.resolved == self.path else f" (resolves to {self.resolved})"
        return f"{self.field}: {self.path}{via}"


def _looks_local(name: str) -> bool:
    return name.startswith(_EXPLICIT) or name in (".", "..")


def spec_paths(spec: spec_pb2.JobSpec, cwd: Path) -> Iterator[tuple[str, str]]:
    """(field, path) for every field of `spec` that names a file or folder on the worker.

    Hub ids (a model or dataset name) are not paths unless written as one or present as a
    folder under `cwd` (the training process's working directory), which is exactly when
    Hugging Face would read them from disk.
    """
    m, d = spec.model, spec.data

    def local_name(name: str) -> bool:
        return bool(name) and (_looks_local(name) or (cwd / name).exists())

    if m.source == "job" or local_name(m.name):
        yield "model.name", m.name  # model.source job: the source job's exported folder
    if m.checkpoint:
        yield "model.checkpoint", m.checkpoint
    if d.source in ("csv", "jsonl", "parquet"):
        for name in ("train", "eval", "test"):
            if getattr(d, name):
                yield f"data.{name}", getattr(d, name)
    if d.source in ("torchvision", "imagefolder") and d.root:
        yield "data.root", d.root
        if d.source == "imagefolder":  # sub folders of root, joined by the engine
            for name in ("train", "eval", "test"):
                if getattr(d, name):
                    yield f"data.{name}", os.path.join(d.root, getattr(d, name))
    if d.source == "hf" and local_name(d.name):
        yield "data.name", d.name
    if spec.output.dir:
        yield "output.dir", spec.output.dir


def roots_from_env(environ=None) -> list[str]:
    """The folders listed in $TUNEFLEET_ALLOWED_ROOTS (os.pathsep-separated)."""
    environ = os.environ if environ is None else environ
    return [r for r in environ.get(ENV_ALLOWED_ROOTS, "").split(os.pathsep) if r]


def _real(path: str | os.PathLike, cwd: Path) -> str:
    p = Path(os.path.expanduser(os.fspath(path)))
    return os.path.realpath(p if p.is_absolute() else cwd / p)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class PathPolicy:
    """Allowed roots for the paths in job specs; no roots = no restriction."""

    def __init__(
        self,
        allowed_roots: Iterable[str | os.PathLike] = (),
        *,
        always_allowed: Iterable[str | os.PathLike] = (),
        cwd: str | os.PathLike | None = None,
    ):
        self.cwd = Path(cwd or os.getcwd())
        self.allowed_roots = tuple(_real(r, self.cwd) for r in allowed_roots)
        extra = tuple(_real(r, self.cwd) for r in always_allowed)
        self._roots = (*self.allowed_roots, *extra)

    @property
    def restricted(self) -> bool:
        return bool(self.allowed_roots)

    def violations(self, spec: spec_pb2.JobSpec) -> list[PathViolation]:
        """The spec's paths that lead outside the allowed roots (none when unrestricted)."""
        if not self.restricted:
            return []
        found = []
        for field, path in spec_paths(spec, self.cwd):
            resolved = _real(path, self.cwd)
            if not any(_inside(resolved, root) for root in self._roots):
                found.append(PathViolation(field, path, resolved))
        return found

    def check(self, spec: spec_pb2.JobSpec) -> str | None:
        """None if the spec may run here, else the reason to fail it with.

        The reason names the fields and the paths as the spec wrote them, nothing more:
        it is shown to the job's submitter, who learns neither the worker's allowed roots
        nor where a symlink on the worker leads (the worker's log has both)."""
        bad = self.violations(spec)
        if not bad:
            return None
        log.warning(
            "refused paths (allowed roots %s): %s",
            ", ".join(self.allowed_roots),
            "; ".join(str(v) for v in bad),
        )
        listed = "; ".join(f"{v.field}: {v.path}" for v in bad)
        return (
            f"path outside the folders this worker allows (ftctl worker --allowed-root): {listed}"
        )

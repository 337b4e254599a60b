"""Submitting from a laptop: a job's local files go to the coordinator's storage first.

A spec's paths are the workers' paths; a file that exists only on the submitting machine
must travel. When the coordinator was started with `--storage-uri s3://bucket/prefix` (it
tells clients in ListWorkers), `Client.submit` uploads every local file or folder the spec
names there, under its content hash, and the stored spec names the URL instead:

    data.train: /home/me/train.csv  ->  s3://bucket/prefix/sha256/9f2c.../train.csv

The same bytes always land under the same name, so a re-submit uploads nothing (the object
is there with the right size); a folder (a model, a parquet dataset) is uploaded file by
file and marked complete last. A failing store is retried with exponential backoff, then
reported with the field, the file and the last error.

A sweep's choices of these fields travel too: `sweep.space: {data.train: [a.csv, b.csv]}`
uploads both files, and the choices (and a `when` condition naming one) become the URLs,
so each trial's job names URLs as a plain job's would.

Paths this machine does not have pass through untouched: they are taken to be the
workers' own paths (a note says so). Credentials come from this machine's environment
(AWS_* and the like), as fsspec finds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from google.protobuf.descriptor import FieldDescriptor

from tunefleet.client.errors import TunefleetError
from tunefleet.spec import sweep as sweep_space
from tunefleet.spec.environment import PathField, check_environment, missing, path_fields
from tunefleet.spec.errors import FieldError
from tunefleet.spec.urls import is_url
from tunefleet.v1 import spec_pb2

__all__ = [
    "NO_STORAGE_HINT",
    "UploadError",
    "UploadProgress",
    "Uploaded",
    "local_inputs",
    "upload_inputs",
]

NO_STORAGE_HINT = (
    "start the coordinator with --storage-uri s3://BUCKET/PREFIX (or $TUNEFLEET_STORAGE_URI) "
    "so that clients upload local files there, or name paths the workers see "
    "(ftctl submit --no-upload)"
)
SWEPT = "sweep.space."  # a PathField of a sweep's choice: SWEPT + the field it sets
COMPLETE = ".complete"  # written last in a folder's upload: its presence means complete
_CHUNK = 1 << 20
_TEXT = FieldDescriptor.TYPE_STRING  # path fields are text; apply() would convert others


class UploadError(TunefleetError):
    """A local file could not be uploaded to the coordinator's storage."""


@dataclass(frozen=True)
class UploadProgress:
    """Where an upload stands, for a progress bar: `done` of `total` bytes of the files that
    must travel (those already in the storage are not counted), `file` the one on its way."""

    done: int
    total: int
    file: str


ProgressFn = Callable[[UploadProgress], None]


def _bytes_sent(report: ProgressFn, total: int, before: int, file: str):
    """An fsspec callback that reports each chunk s3fs & co. send (`before`: bytes of the
    earlier files). A retry starts the file's count again."""
    from fsspec.callbacks import Callback

    class _Sent(Callback):
        def call(self, *args, **kwargs):
            report(UploadProgress(min(before + self.value, total), total, file))

    return _Sent()


class _Plan(NamedTuple):
    """One local file or folder's upload, decided before any byte is sent (the bar needs
    the total)."""

    path_field: Any  # the first spec field (path, value) naming it
    local: Path
    files: list[tuple[Path, str]]
    hashes: list[tuple[str, str, int]]  # (relative name, sha256, size) per file
    target: str
    complete: str
    digest: str
    what: str
    reused: bool  # already in the storage: nothing to send


@dataclass
class Uploaded:
    """What preparing a spec's inputs did: the notes to show, bytes and files uploaded."""

    notes: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    uploaded_files: int = 0
    reused_files: int = 0


def _swept_path_fields(spec: spec_pb2.JobSpec) -> Iterator[PathField]:
    """A sweep's choices that name a file or folder, each as `path_fields` sees it in the
    trial that draws it (the base job with that value set: e.g. data.source decides), its
    path SWEPT + the field (`sweep.space.data.train`)."""
    if not spec.HasField("sweep"):
        return
    base = spec_pb2.JobSpec()
    base.CopyFrom(spec)
    base.ClearField("sweep")
    for key in sorted(spec.sweep.space):
        param = spec.sweep.space[key]
        descriptor, _ = sweep_space.field_at(key)
        if param.type != "choice" or descriptor is None or descriptor.type != _TEXT:
            continue
        for value in param.values:
            trial = sweep_space.apply(base, {key: value})
            for f in path_fields(trial):
                if f.path == key and f.value == value:
                    yield replace(f, path=SWEPT + key)


def local_inputs(spec: spec_pb2.JobSpec) -> tuple[list, list[str], list[FieldError]]:
    """The spec's path fields (a sweep's choices included) this machine has (to upload),
    notes for those it has not (the workers' paths), and the problems of the ones it has
    (a folder given for a file; a sweep's are its trials', which the validator reports)."""
    present, notes = [], []
    for f in [*path_fields(spec), *_swept_path_fields(spec)]:
        if is_url(f.value):
            continue
        why = missing(f)
        if why is None:
            present.append(f)
        elif why.startswith("no such"):
            notes.append(
                f"{f.path}: {f.value} is not on this machine; sent as the workers' path "
                "(each worker checks it before it trains)"
            )
    seen = {f.path for f in present}
    problems = [
        e for e in check_environment(spec) if e.path in seen or not e.message.startswith("no such")
    ]
    return present, notes, problems


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[tuple[Path, str]]:
    if root.is_file():
        return [(root, "")]
    found = []
    for dirpath, _dirs, names in os.walk(root):
        for name in sorted(names):
            p = Path(dirpath) / name
            found.append((p, p.relative_to(root).as_posix()))
    return sorted(found, key=lambda x: x[1])


def _retrying(what: str, action: Callable[[], object], *, tries: int, backoff_s: float):
    """`action()`, tried up to `tries` times with exponential backoff; UploadError after."""
    delay, started = backoff_s, time.monotonic()
    for attempt in range(1, tries + 1):
        try:
            return action()
        except FileNotFoundError as exc:  # a definite answer (no such bucket): no retry
            raise UploadError(f"{what}: {' '.join(str(exc).split())}") from None
        except Exception as exc:
            if attempt == tries:
                raise UploadError(
                    f"{what}: {type(exc).__name__}: {exc} (tried {tries} times over "
                    f"{time.monotonic() - started:.1f} s; is the storage reachable?)"
                ) from None
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


class _Store:
    def __init__(self, storage_uri: str, tries: int, backoff_s: float):
        import fsspec

        try:
            self.fs, self.root = fsspec.core.url_to_fs(storage_uri)
        except (ImportError, ValueError) as exc:
            scheme = storage_uri.split("://", 1)[0]
            raise UploadError(
                f"the coordinator's storage {storage_uri} cannot be used from this machine: "
                f"{exc} (pip install 'tunefleet[{scheme}]')"
            ) from None
        self.uri = storage_uri.rstrip("/")
        self.tries, self.backoff_s = tries, backoff_s
        # A file:// storage has real folders, which put_file does not create. Only there:
        # an object store's makedirs creates a missing bucket, which would hide the
        # store's "no such bucket" behind a bucket nobody meant to have.
        self.local = "file" in (
            (self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol
        )

    def retry(self, what: str, action: Callable[[], object]):
        return _retrying(what, action, tries=self.tries, backoff_s=self.backoff_s)

    def size(self, path: str) -> int | None:
        try:
            self.fs.invalidate_cache(path)
            return int(self.fs.info(path).get("size") or 0)
        except FileNotFoundError:
            return None


def upload_inputs(
    spec: spec_pb2.JobSpec,
    fields: list,
    storage_uri: str,
    *,
    tries: int = 5,
    backoff_s: float = 0.5,
    progress: ProgressFn | None = None,
) -> tuple[spec_pb2.JobSpec, Uploaded]:
    """Uploads the local files of `fields` under storage_uri/sha256/DIGEST/NAME and returns
    the spec naming those URLs (the input is not changed) and what was uploaded. A file
    several fields name (the base job's and a sweep's choice) is sent once.
    `progress` hears about every chunk sent (UploadProgress)."""
    store = _Store(storage_uri, tries, backoff_s)
    out = spec_pb2.JobSpec()
    out.CopyFrom(spec)
    done = Uploaded()
    plans: dict[str, _Plan] = {}
    for f in fields:
        if f.value in plans:
            continue
        local = Path(f.value)
        files = _files(local)
        hashes = [(rel, _sha256(p), p.stat().st_size) for p, rel in files]
        if local.is_file():
            digest = hashes[0][1]
        else:
            digest = hashlib.sha256(json.dumps(hashes).encode("utf-8")).hexdigest()
        base = f"{store.root.rstrip('/')}/sha256/{digest}"
        target = f"{base}/{local.name}"
        what = f"{f.path}: cannot upload {local} to {store.uri}"
        complete = target if local.is_file() else f"{base}/{COMPLETE}"
        present = store.retry(what, lambda c=complete: store.size(c))
        reused = present is not None and (not local.is_file() or present == hashes[0][2])
        plans[f.value] = _Plan(f, local, files, hashes, target, complete, digest, what, reused)
    # The bar's 100 %: the bytes of every file not already in the storage.
    total = sum(size for plan in plans.values() if not plan.reused for _, _, size in plan.hashes)
    for _f, local, files, hashes, target, complete, _digest, what, reused in plans.values():
        if reused:
            done.reused_files += len(files)
        else:
            for (p, rel), (_, _, size) in zip(files, hashes, strict=True):
                remote = f"{target}/{rel}" if rel else target

                def put(p=p, r=remote):
                    sent = None
                    if progress is not None:
                        sent = _bytes_sent(progress, total, done.uploaded_bytes, str(p))
                    if store.local:
                        store.fs.makedirs(r.rsplit("/", 1)[0], exist_ok=True)
                    store.fs.put_file(str(p), r, **({"callback": sent} if sent else {}))

                store.retry(what, put)
                done.uploaded_bytes += size
                done.uploaded_files += 1
                if progress is not None:  # a store that reports no chunks still moves the bar
                    progress(UploadProgress(done.uploaded_bytes, total, str(p)))
            if not local.is_file():
                store.retry(what, lambda c=complete: store.fs.pipe_file(c, b"{}"))
    for f in fields:
        plan = plans[f.value]
        _name(out, f, f"{store.uri}/sha256/{plan.digest}/{plan.local.name}")
    return out, done


def _name(spec: spec_pb2.JobSpec, f: PathField, url: str) -> None:
    """`spec` with `url` where field `f` had its local path: a sweep's choice is replaced
    in its values and in every `when` that names it, so the conditions still hold."""
    if not f.path.startswith(SWEPT):
        message, attr = f.path.split(".", 1)
        setattr(getattr(spec, message), attr, url)
        return
    key = f.path.removeprefix(SWEPT)
    param = spec.sweep.space[key]
    param.values[:] = [url if v == f.value else v for v in param.values]
    for other in spec.sweep.space.values():
        if other.when.get(key) == f.value:
            other.when[key] = url

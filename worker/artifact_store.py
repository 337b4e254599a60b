"""Shared artifact storage: a worker started with `--artifacts-uri URL` copies each
succeeded job's final artifacts there, and `ftctl artifacts JOB --download DIR` fetches
them from anywhere. Any fsspec URL works: s3://bucket/prefix (with s3fs), gs://... (gcsfs),
file:///mnt/shared, memory:// (tests).

Training itself stays on local disk; the final outputs travel after the job succeeded,
and its checkpoints while it trains (worker/checkpoint_sync.py: a job requeued to a worker
on another host resumes from them):

    URL/JOB_ID/model/...            every artifact except checkpoints/, under its name
    URL/JOB_ID/model_int8/...       relative to the job's output folder
    URL/JOB_ID/spec.json
    URL/JOB_ID/tensorboard/...      the TensorBoard logs
    URL/JOB_ID/attempts/N/...       each attempt's events.jsonl and engine.log
    URL/JOB_ID/checkpoints/...      the newest checkpoints (uploaded during training)
    URL/JOB_ID/result.json          written last: its presence means the upload is complete

The job's artifacts map keeps the local paths (a `model.source: job` chain on the same
worker or a shared file system still loads from them) and gains one `NAME_uri` entry per
uploaded artifact plus `artifacts_uri`, the job's folder. A download of everything leaves
the checkpoints out (resumable training state, not a result; `--name checkpoints` gets them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tunefleet.spec import spec_to_dict
from tunefleet.spec.urls import storage_url_problem
from tunefleet.transport import Backoff
from tunefleet.v1 import job_pb2, spec_pb2

log = logging.getLogger(__name__)

__all__ = [
    "ROOT_KEY",
    "URI_SUFFIX",
    "ArtifactStore",
    "ArtifactStoreError",
    "CHECKPOINTS",
    "download",
    "download_job",
    "publish_artifacts",
    "remote_artifacts",
    "url_join",
]

ROOT_KEY = "artifacts_uri"
URI_SUFFIX = "_uri"
CHECKPOINTS = "checkpoints"  # uploaded while the job trains, by worker/checkpoint_sync.py
# Artifacts the final upload leaves out: resumable training state, not a result.
LOCAL_ONLY = frozenset({CHECKPOINTS})
# Files of the output folder uploaded besides the artifacts, by artifact name.
EXTRA_FILES = {"spec": "spec.json", "tensorboard": "tensorboard", "attempts": "attempts"}
RESULT_FILE = "result.json"
# The final upload: tries, and the first pause (doubling): about 15 s of store outage.
PUBLISH_TRIES = 5
PUBLISH_BACKOFF_S = 1.0
# The store's definite answers: trying again cannot help.
_DEFINITE_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, FileExistsError)
_CHUNK = 8 << 20  # a download's reads from the store

ReportFn = Callable[[list[job_pb2.Event]], bool]


class ArtifactStoreError(Exception):
    """The storage URL cannot be used (unknown protocol, missing package, bad path)."""


def _url_to_fs(url: str):
    try:
        import fsspec
    except ImportError:
        raise ArtifactStoreError(
            "shared artifact storage needs fsspec: pip install 'tunefleet[worker]'"
        ) from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:  # s3:// without s3fs, gs:// without gcsfs...
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        raise ArtifactStoreError(f"{url}: the {protocol}:// file system needs {exc}") from None
    except ValueError as exc:  # an unknown protocol
        raise ArtifactStoreError(f"{url}: {exc}") from None


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return bool({"file", "local", "memory"} & set(protocols))


def _why(exc: BaseException) -> str:
    """An error from the store in one line: its type and message."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def url_join(*parts: str) -> str:
    """Joins URL or store path parts with single slashes."""
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p)


def _files(path: Path) -> Iterator[tuple[Path, str]]:
    """(file, path relative to `path`) for a file or every file below a folder."""
    if path.is_file():
        yield path, ""
        return
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in sorted(filenames):
            file = Path(dirpath) / name
            yield file, file.relative_to(path).as_posix()


class ArtifactStore:
    """One storage root (an fsspec URL) where jobs' final artifacts are published."""

    def __init__(self, root_uri: str):
        if not root_uri:
            raise ArtifactStoreError("the artifact storage URL is empty")
        problem = storage_url_problem(root_uri)
        if problem:  # a plain path or `s3:/x` would be a folder relative to the worker's cwd
            raise ArtifactStoreError(f"{root_uri}: {problem}")
        self.fs, self.root_path = _url_to_fs(root_uri)
        self.root_uri = root_uri.rstrip("/")

    def check_reachable(self) -> None:
        """Asks the store about the bucket once (ArtifactStoreError with its answer): a
        missing bucket, missing credentials or a wrong endpoint would otherwise surface
        only when the first job's training succeeded and its upload failed. Only an object
        store's top level (the bucket) must exist: a prefix, or a local folder, is made as
        needed. Access denied is only logged: credentials scoped to the prefix may write
        there without being allowed to look at the bucket."""
        bucket = self.root_path.strip("/").split("/", 1)[0]
        if _is_local(self.fs) or not bucket:
            return
        try:
            self.fs.info(bucket)
        except FileNotFoundError:
            raise ArtifactStoreError(
                f"{self.root_uri}: the bucket {bucket} does not exist; create it, or fix the URL"
            ) from None
        except PermissionError as exc:
            log.warning("%s: cannot look at the bucket (%s); uploads may still work", self, exc)
        except Exception as exc:
            raise ArtifactStoreError(
                f"{self.root_uri}: cannot reach the store: {_why(exc)}"
            ) from None

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root_uri!r})"

    def job_uri(self, job_id: str) -> str:
        return url_join(self.root_uri, job_id)

    def upload(
        self,
        job_id: str,
        out_dir: Path,
        artifacts: dict[str, str],
        submitted: spec_pb2.JobSpec | None = None,
    ) -> dict[str, str]:
        """Copies a job's final artifacts; returns the `NAME_uri` entries and `artifacts_uri`.

        A second upload of the same job (a later attempt) replaces the first. `submitted`:
        the spec as submitted, stored as spec.json in place of the engine's, which names
        this worker's cached copies of the job's URLs (paths no reader of the store has).
        """
        out_dir = Path(out_dir).resolve()
        items: list[tuple[str, Path, str]] = []
        for name, location in sorted(artifacts.items()):
            path = Path(location)
            if name in LOCAL_ONLY or "://" in location or not path.exists():
                continue
            path = path.resolve()
            relative = path.relative_to(out_dir).as_posix() if path.is_relative_to(out_dir) else ""
            items.append((name, path, relative or path.name))
        for name, relative in EXTRA_FILES.items():
            if name not in artifacts and (out_dir / relative).exists():
                items.append((name, out_dir / relative, relative))
        result = out_dir / RESULT_FILE
        if result.exists():
            items.append(("result", result, RESULT_FILE))  # last: marks a complete upload

        job_path = url_join(self.root_path, job_id)
        self._clear(job_path)
        uris = {ROOT_KEY: self.job_uri(job_id)}
        count = size = 0
        spec_json = None
        if submitted is not None:
            spec_json = (json.dumps(spec_to_dict(submitted), indent=2) + "\n").encode("utf-8")
        for name, path, relative in items:
            for file, below in _files(path):
                target = url_join(job_path, relative, below)
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                if name == "spec" and not below and spec_json is not None:
                    self.fs.pipe_file(target, spec_json)
                else:
                    self.fs.put_file(str(file), target)
                count += 1
                size += file.stat().st_size
            uris[f"{name}{URI_SUFFIX}"] = url_join(self.root_uri, job_id, relative)
        if self.fs.exists(url_join(job_path, CHECKPOINTS)):
            uris[f"{CHECKPOINTS}{URI_SUFFIX}"] = url_join(self.root_uri, job_id, CHECKPOINTS)
        log.info("uploaded %d files (%.1f MB) to %s", count, size / 1e6, uris[ROOT_KEY])
        return uris

    def _clear(self, job_path: str) -> None:
        """Removes an earlier upload of the job (a later attempt replaces it), all but the
        checkpoints, which the attempts upload as they train."""
        self.fs.invalidate_cache(job_path)
        if not self.fs.exists(job_path):
            return
        for entry in self.fs.ls(job_path, detail=False):
            if entry.rstrip("/").rsplit("/", 1)[-1] != CHECKPOINTS:
                self.fs.rm(entry, recursive=True)


def remote_artifacts(artifacts: dict[str, str]) -> dict[str, str]:
    """The uploaded artifacts of a job's artifacts map, by name ("model" -> URL)."""
    return {
        name[: -len(URI_SUFFIX)]: uri
        for name, uri in artifacts.items()
        if name.endswith(URI_SUFFIX) and name != ROOT_KEY
    }


def download(
    uri: str, dest: Path, *, keep_name: bool = False, exclude: Iterable[str] = ()
) -> list[Path]:
    """Copies a file or a whole folder at `uri` into the folder `dest`; returns the files.

    A file lands as dest/NAME; a folder's contents land directly in `dest`, or in
    dest/NAME with `keep_name`. `exclude`: names of the folder's entries to leave out.
    The store's failures (no credentials, unreachable, access denied) are
    ArtifactStoreError naming the URL; OSError is this machine's own (the folder, the disk).
    """
    exclude = frozenset(exclude)
    fs, path = _url_to_fs(uri)
    dest = Path(dest)
    exists, isdir = _reading(uri, lambda: (fs.exists(path), fs.isdir(path)))
    if not exists:
        raise ArtifactStoreError(f"{uri} does not exist")
    if not isdir:
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / path.rstrip("/").rsplit("/", 1)[-1]
        _get_file(fs, path, target, uri)
        return [target]
    root = path.rstrip("/")
    if keep_name:
        dest = dest / root.rsplit("/", 1)[-1]
    files = []
    for remote in _reading(uri, lambda: sorted(fs.find(root))):
        relative = remote[len(root) :].lstrip("/") if remote.startswith(root) else remote
        if relative.split("/", 1)[0] in exclude:
            continue
        target = dest.joinpath(*relative.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        _get_file(fs, remote, target, url_join(uri, relative))
        files.append(target)
    return files


def _reading(uri: str, action: Callable):
    """`action()`, a read from the store; its failure as ArtifactStoreError naming `uri`."""
    try:
        return action()
    except FileNotFoundError:
        raise ArtifactStoreError(f"{uri} does not exist") from None
    except Exception as exc:
        raise ArtifactStoreError(f"cannot read {uri}: {_why(exc)}") from None


def _get_file(fs, remote: str, target: Path, uri: str) -> None:
    """One file, fetched to a temporary name beside `target` and then renamed: an
    interrupted or failed download never leaves a half-written file under the real name,
    nor truncates the one a previous download left there. The file is streamed here,
    rather than by fs.get_file, so that a failed read (the store's) and a failed write
    (this disk's) are told apart."""
    tmp = target.with_name(f".{target.name}.part")
    try:
        with tmp.open("wb") as out:
            source = _reading(uri, lambda: fs.open(remote, "rb"))
            with source:
                while chunk := _reading(uri, lambda: source.read(_CHUNK)):
                    out.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish_artifacts(
    store: ArtifactStore | None,
    job_id: str,
    out_dir: Path,
    outcome,
    report,
    submitted=None,
    *,
    tries: int = PUBLISH_TRIES,
    backoff_s: float = PUBLISH_BACKOFF_S,
):
    """After a job succeeded, uploads its artifacts to `store` and adds their URLs to the
    outcome. A store that fails is tried `tries` times with backoff (an upload starts
    over: it replaces the job's folder); then the outcome is FAILED (the local copy stays),
    retryable unless the store's answer was definite (no such bucket, access denied): a
    blip must not throw away a finished training, and the next attempt resumes from the
    newest checkpoint. `submitted`: the job's spec as submitted (see ArtifactStore.upload).

    `outcome` is the JobRunner's JobOutcome (None: the job is no longer ours); `report`
    sends progress log events to the job's event log. Without a store: `outcome` as is.
    """
    from tunefleet.worker.job_runner import JobOutcome, log_event

    if store is None or outcome is None or outcome.state != job_pb2.SUCCEEDED:
        return outcome
    destination = store.job_uri(job_id)
    report([log_event(f"uploading artifacts to {destination}")])
    backoff = Backoff(backoff_s, 8 * backoff_s)
    for attempt in range(1, tries + 1):
        try:
            uris = store.upload(job_id, out_dir, outcome.artifacts, submitted)
            break
        except Exception as exc:
            definite = isinstance(exc, _DEFINITE_ERRORS)
            if definite or attempt == tries:
                log.exception("job %s: uploading artifacts to %s failed", job_id, destination)
                tried = f" (tried {attempt} times)" if attempt > 1 else ""
                return JobOutcome(
                    job_pb2.FAILED,
                    f"training succeeded but uploading its artifacts to {destination} failed"
                    f"{tried}: {_why(exc)} (the local copy is in {out_dir})"[:500],
                    retryable=not definite,
                )
            pause = backoff.next()
            warning = (
                f"uploading artifacts to {destination} failed (try {attempt} of {tries}): "
                f"{_why(exc)}; trying again in {pause:.0f} s"
            )
            log.warning("job %s: %s", job_id, warning)
            report([log_event(warning[:1000], "warning")])
            time.sleep(pause)
    report([log_event(f"artifacts uploaded to {destination}")])
    return dataclasses.replace(outcome, artifacts={**outcome.artifacts, **uris})


def download_job(artifacts: dict[str, str], dest: Path, names: Iterable[str] = ()) -> list[Path]:
    """Fetches a job's uploaded artifacts (all of them, or those in `names`) into `dest`,
    laid out as in storage: dest/model/..., dest/result.json..."""
    root = artifacts.get(ROOT_KEY)
    if not root:
        raise ArtifactStoreError(
            "the job has no uploaded artifacts: its worker ran without --artifacts-uri, or the "
            "job has not succeeded (the local paths above are on the worker's disk)"
        )
    names = list(names)
    if not names:
        return download(root, dest, exclude=LOCAL_ONLY)
    remote = remote_artifacts(artifacts)
    unknown = [n for n in names if n not in remote]
    if unknown:
        raise ArtifactStoreError(
            f"no uploaded artifact named {', '.join(unknown)}; uploaded: {', '.join(sorted(remote))}"
        )
    return [file for name in names for file in download(remote[name], dest, keep_name=True)]

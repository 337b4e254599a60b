"""Checkpoints in the artifact storage, for workers that share no file system.

On a shared file system every attempt of a job runs in the same out_dir and the engine
resumes from the newest checkpoint there. Without one, a job requeued to another worker
(its worker lost, cut off, drained, crashed) would find an empty folder and start over.
So, when the worker has --artifacts-uri, each checkpoint the engine completes is copied to
the store while the job trains, and an attempt whose out_dir holds nothing newer starts by
downloading the newest copy into out_dir/checkpoints/; the engine then resumes from it
exactly as from a checkpoint it wrote itself (same files, same MANIFEST.json).

    URL/JOB_ID/checkpoints/step-0000040.attempt-2/...             the checkpoint's files
    URL/JOB_ID/checkpoints/step-0000040.attempt-2/events.jsonl    the attempt's events
    URL/JOB_ID/checkpoints/step-0000040.attempt-2/UPLOADED.json   written last

- A checkpoint counts once its UPLOADED.json exists: an upload cut short (a crash, a lost
  network) is never downloaded, and the next one to finish removes it.
- One folder per attempt: an attempt that lost its lease may still have a write in flight
  when the network comes back; it lands in its own folder, never in the current attempt's
  copy of the same step. And it never writes the marker: the lease is checked first, and
  once the attempt is fenced (lease lost, job taken away) it stays fenced, even if a later
  heartbeat renews the lease.
- Training never waits: uploads run on a thread of their own, and only the newest
  checkpoint on disk is uploaded (the ones the engine wrote meanwhile are skipped: the
  queue holds one). Its files are hard-linked into a staging folder first, so the engine's
  pruning cannot pull them away mid-upload and the disk holds no copy.
- A store that fails is retried with backoff; when it keeps failing the job gets a warning
  event and trains on (a resume elsewhere starts from an older uploaded checkpoint).
- The store keeps what the engine keeps locally: the newest train.keep_checkpoints.

Multi-node jobs are not synced: their machines share one out_dir, which needs a shared
file system anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunefleet.transport import Backoff
from tunefleet.worker.artifact_store import CHECKPOINTS, ArtifactStore, url_join
from tunefleet.worker.job_runner import JobRunner, ReportFn, log_event

log = logging.getLogger(__name__)

__all__ = ["MARKER", "CheckpointSync", "RemoteCheckpoint", "local_checkpoints", "synced"]

MARKER = "UPLOADED.json"
EVENTS = "events.jsonl"
_FILES = "files"  # in a staging folder: the checkpoint's own files
MANIFEST = "MANIFEST.json"  # the engine's (worker/engine/checkpoint.py, which needs torch)
_LOCAL = re.compile(r"^step-(\d{7,})$")
_REMOTE = re.compile(r"^step-(\d{7,})\.attempt-(\d+)$")
STAGING = ".checkpoint-upload"  # in out_dir: hard links of the checkpoint being uploaded
# After an attempt, how long its last checkpoint may take to upload (a drained engine's:
# the next attempt, elsewhere, resumes from it). Heartbeats hold the lease meanwhile.
FLUSH_TIMEOUT_S = 120.0


def local_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the engine's complete checkpoints under `root`, oldest first."""
    found = []
    for path in root.iterdir() if root.is_dir() else ():
        match = _LOCAL.match(path.name)
        if match and (path / MANIFEST).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


@dataclass(frozen=True)
class RemoteCheckpoint:
    """A complete uploaded checkpoint, as its marker describes it."""

    step: int
    attempt: int
    path: str  # in the store's file system
    uri: str
    worker: str = ""
    host: str = ""
    files: tuple[str, ...] = ()
    events: bool = False  # the uploading attempt's events.jsonl is beside the files


class CheckpointSync:
    """Uploads one attempt's checkpoints as the engine writes them (`start`...`close`), and
    fetches the newest uploaded one before the attempt starts (`restore`)."""

    def __init__(
        self,
        store: ArtifactStore,
        job_id: str,
        out_dir: Path,
        *,
        attempt: int,
        worker_id: str,
        keep: int,
        is_current: Callable[[], bool],
        report: ReportFn,
        poll_s: float = 0.5,
        tries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
    ):
        """
        Args:
            is_current: False once the job may run elsewhere (our lease ran out, the
                coordinator took the job back); nothing is published after that.
            report: sends log events to the job (from this class's thread: it must not
                number its batches like the runner's relay does).
            keep: how many complete checkpoints the store keeps (train.keep_checkpoints).
        """
        self.fs = store.fs
        self.job_id = job_id
        self.root = url_join(store.root_path, job_id, CHECKPOINTS)
        self.root_uri = url_join(store.root_uri, job_id, CHECKPOINTS)
        self.out_dir = Path(out_dir)
        self.local_root = self.out_dir / CHECKPOINTS
        # The engine's event file of this attempt (JobRunner.attempt_dir of machine rank 0).
        self.events_path = self.out_dir / "attempts" / str(attempt) / EVENTS
        self.staging = self.out_dir / STAGING
        self.attempt = attempt
        self.worker_id = worker_id
        self.keep = max(keep, 1)
        self._is_current = is_current
        self.report = report
        self.poll_s = poll_s
        self.tries = max(tries, 1)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.uploaded: list[int] = []  # steps published by this attempt, in order
        self._done_step = -1  # the newest local step handled (published or given up)
        self._fenced = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> bool:
        """Whether this attempt may still publish. Latched: once False, always False."""
        if not self._fenced and not self._is_current():
            self._fenced = True
            log.warning("job %s attempt %d: fenced; no more checkpoint uploads", *self._who())
        return not self._fenced

    def _who(self) -> tuple[str, int]:
        return self.job_id, self.attempt

    # ---- before the attempt: download ----------------------------------------------------

    def newest_remote(self) -> RemoteCheckpoint | None:
        """The newest complete uploaded checkpoint (highest step, then attempt)."""
        complete, _ = self._listing()
        if not complete:
            return None
        step, attempt, folder = max(complete)
        marker = json.loads(self.fs.cat_file(url_join(folder, MARKER)))
        return RemoteCheckpoint(
            step=step,
            attempt=attempt,
            path=folder,
            uri=url_join(self.root_uri, folder.rsplit("/", 1)[-1]),
            worker=str(marker.get("worker", "")),
            host=str(marker.get("host", "")),
            files=tuple(str(f) for f in marker.get("files", ())),
            events=marker.get("events") == EVENTS,
        )

    def restore(self) -> int | None:
        """Downloads the newest uploaded checkpoint when out_dir has none as new; returns its
        step (None: nothing downloaded). A store that keeps failing is a warning: the
        engine then starts from what out_dir has (or from the beginning)."""
        local = local_checkpoints(self.local_root)
        local_step = local[-1][0] if local else -1
        started = time.monotonic()
        try:
            remote = self._retrying(self.newest_remote, "listing the uploaded checkpoints")
            if remote is None or remote.step <= local_step:
                return None
            size = self._retrying(lambda: self._download(remote), f"downloading {remote.uri}")
        except _GaveUp as exc:
            start = f"step {local_step}" if local_step >= 0 else "the beginning"
            self._warn(f"{exc}; training starts from {start} on worker {self.worker_id}")
            return None
        message = (
            f"resumed from uploaded checkpoint step {remote.step} (host {remote.host}, worker "
            f"{remote.worker}, attempt {remote.attempt}): {len(remote.files)} files, "
            f"{size / 1e6:.1f} MB from {remote.uri} in {time.monotonic() - started:.1f} s"
        )
        log.info("job %s attempt %d: %s", *self._who(), message)
        self.report([log_event(message)])
        return remote.step

    def _download(self, remote: RemoteCheckpoint) -> int:
        if MANIFEST not in remote.files:
            raise ValueError(f"{remote.uri}/{MARKER} lists no {MANIFEST}")
        final = self.local_root / f"step-{remote.step:07d}"
        tmp = self.local_root / f".{final.name}.download"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        bad = [n for n in remote.files if "/" in n or n in ("", ".", "..")]
        if bad:
            raise ValueError(f"{remote.uri}/{MARKER} lists a bad file name {bad[0]!r}")
        names = list(remote.files)
        self.fs.get([url_join(remote.path, n) for n in names], [str(tmp / n) for n in names])
        size = sum((tmp / n).stat().st_size for n in names)
        # The uploading attempt's events up to the checkpoint: the runner sends their
        # metrics again (JobRunner._unrelayed_metrics), so that the steps that worker
        # trained but never reported (it was killed, cut off) are not missing from the
        # job's metrics. A local file of that attempt (the same worker) is as complete.
        events = self.out_dir / "attempts" / str(remote.attempt) / EVENTS
        if remote.events and not events.exists():
            events.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(url_join(remote.path, EVENTS), str(events))
            size += events.stat().st_size
        shutil.rmtree(final, ignore_errors=True)  # an incomplete local copy of that step
        os.replace(tmp, final)
        return size

    # ---- while the attempt runs: upload --------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name="tunefleet-checkpoint-sync", daemon=True
        )
        self._thread.start()

    def close(self, timeout_s: float) -> None:
        """Uploads the newest checkpoint if it is not yet (the one a drained engine wrote on
        SIGTERM is what the next attempt resumes from), waiting up to `timeout_s`; a fenced
        attempt does not wait. What is still running then stops before its marker."""
        self._stopping.set()
        if self._thread is None:
            return
        self._thread.join(timeout_s if self.current() else 0)
        if self._thread.is_alive():
            self._fenced = True  # the attempt is over: publish nothing from now on
            log.warning(
                "job %s attempt %d: the last checkpoint upload did not finish", *self._who()
            )

    def _loop(self) -> None:
        try:
            while True:
                stopping = self._stopping.wait(self.poll_s)
                if not self.current():
                    return
                self.sync_once()
                if stopping:
                    return
        except Exception:  # a bug of ours must not take the worker down
            log.exception("job %s attempt %d: checkpoint sync failed", *self._who())
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def sync_once(self) -> int | None:
        """Uploads the newest local checkpoint if it is new; returns its step when published."""
        local = local_checkpoints(self.local_root)
        if not local or local[-1][0] <= self._done_step:
            return None
        step, folder = local[-1]
        snapshot = self._snapshot(step, folder)
        if snapshot is None:
            return None  # pruned under us: the next round takes the newer one
        try:
            self._done_step = step
            uploaded = self._retrying(
                lambda: self._upload(step, snapshot), f"uploading step {step}"
            )
        except _GaveUp as exc:
            self._warn(f"{exc}; training goes on (a resume elsewhere starts from an older one)")
            return None
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)
        if not uploaded:
            return None
        self.uploaded.append(step)
        try:
            self._prune()
        except Exception as exc:  # the next upload prunes again
            log.warning("job %s: pruning %s failed: %s", self.job_id, self.root_uri, exc)
        return step

    def _snapshot(self, step: int, folder: Path) -> Path | None:
        """Hard links of the checkpoint's files (the engine may prune it meanwhile), and a
        copy of this attempt's events so far (see _download)."""
        target = self.staging / folder.name
        shutil.rmtree(target, ignore_errors=True)
        (target / _FILES).mkdir(parents=True)
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            for name in sorted({*manifest.get("files", ()), MANIFEST}):
                try:
                    os.link(folder / name, target / _FILES / name)
                except FileNotFoundError:
                    raise
                except OSError:  # no hard links on this disk
                    shutil.copy2(folder / name, target / _FILES / name)
        except (OSError, ValueError):
            shutil.rmtree(target, ignore_errors=True)
            return None
        if self.events_path.is_file():
            shutil.copyfile(self.events_path, target / EVENTS)
        return target

    def _upload(self, step: int, snapshot: Path) -> bool:
        folder = url_join(self.root, f"step-{step:07d}.attempt-{self.attempt}")
        if not self.current():
            return False
        self.fs.makedirs(folder, exist_ok=True)
        started = time.monotonic()
        files = sorted(p.name for p in (snapshot / _FILES).iterdir())
        uploads = [(snapshot / _FILES / name, name) for name in files]
        if (snapshot / EVENTS).is_file():
            uploads.append((snapshot / EVENTS, EVENTS))
        # One call: a store that can (s3fs, gcsfs...) sends the files concurrently.
        self.fs.put([str(local) for local, _ in uploads], [url_join(folder, n) for _, n in uploads])
        size = sum(local.stat().st_size for local, _ in uploads)
        if not self.current():  # our lease ran out while we uploaded: no marker
            return False
        marker = {
            "step": step,
            "attempt": self.attempt,
            "worker": self.worker_id,
            "host": socket.gethostname(),
            "files": files,
            "events": EVENTS if (snapshot / EVENTS).is_file() else "",
            "bytes": size,
            "uploaded": time.time(),
        }
        self.fs.pipe_file(url_join(folder, MARKER), json.dumps(marker, indent=2).encode())
        took = time.monotonic() - started
        message = f"checkpoint step-{step:07d} uploaded ({size / 1e6:.1f} MB in {took:.1f} s)"
        log.info("job %s attempt %d: %s", *self._who(), message)
        self.report([log_event(f"{message} to {self.root_uri}", "debug")])
        return True

    def _prune(self) -> None:
        """Keeps the newest `keep` complete checkpoints; removes the incomplete ones (uploads
        cut short, a fenced attempt's late writes)."""
        if not self.current():
            return
        complete, incomplete = self._listing()
        doomed = [folder for *_, folder in sorted(complete)[: -self.keep]] + incomplete
        for folder in doomed:
            self.fs.rm(folder, recursive=True)

    def _listing(self) -> tuple[list[tuple[int, int, str]], list[str]]:
        """(step, attempt, folder) of the complete uploads, and the incomplete folders."""
        self.fs.invalidate_cache(self.root)
        try:
            found = self.fs.find(self.root, withdirs=False)
        except FileNotFoundError:
            return [], []
        folders: dict[str, bool] = {}
        for path in found:
            folder, _, name = path.rstrip("/").rpartition("/")
            if _REMOTE.match(folder.rsplit("/", 1)[-1]):
                folders[folder] = folders.get(folder, False) or name == MARKER
        complete, incomplete = [], []
        for folder, done in folders.items():
            step, attempt = _REMOTE.match(folder.rsplit("/", 1)[-1]).groups()
            (
                complete.append((int(step), int(attempt), folder))
                if done
                else incomplete.append(folder)
            )
        return complete, incomplete

    # ---- helpers -------------------------------------------------------------------------

    def _retrying(self, action, what: str):
        """`action()`, tried `tries` times with backoff; _GaveUp names the last error."""
        backoff = Backoff(self.backoff_s, self.max_backoff_s)
        for attempt in range(1, self.tries + 1):
            try:
                return action()
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "job %s: %s (try %d of %d): %s", self.job_id, what, attempt, self.tries, last
                )
            if attempt < self.tries:
                self._pause(backoff.next())
        raise _GaveUp(f"{what} at {self.root_uri} failed {self.tries} times: {last}"[:600])

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.current():
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))

    def _warn(self, message: str) -> None:
        log.warning("job %s attempt %d: %s", *self._who(), message)
        self.report([log_event(message, "warning")])


class _GaveUp(Exception):
    """Every try failed; the message says what, where and the last error."""


@contextlib.contextmanager
def synced(
    store: ArtifactStore | None,
    runner: JobRunner,
    lease_valid: Callable[[], bool],
    report: ReportFn,
    *,
    flush_timeout_s: float = FLUSH_TIMEOUT_S,
) -> Iterator[CheckpointSync | None]:
    """Around one attempt's run: the newest uploaded checkpoint fetched first, checkpoints
    uploaded meanwhile, the last one flushed at the end. Nothing without a store, and
    nothing for a multi-node job (see the module docstring)."""
    if store is None or runner.rendezvous is not None:
        yield None
        return
    sync = CheckpointSync(
        store,
        runner.job_id,
        runner.out_dir,
        attempt=runner.attempt,
        worker_id=runner.worker_id,
        keep=runner.job.spec.train.keep_checkpoints or 2,
        is_current=lambda: lease_valid() and not runner.fenced,
        report=report,
    )
    if runner.attempt > 1:  # a first attempt has nothing uploaded: no listing to wait for
        sync.restore()
    sync.start()
    try:
        yield sync
    except BaseException:
        sync.close(0)
        raise
    sync.close(flush_timeout_s)

"""JobRunner: runs one job attempt as a child process and relays its events.

The training process is the engine (`python -m tunefleet.worker.engine ...`, or the
accelerate launcher around it). It runs in its own process group, so a cancel reaches
every rank it started, and it appends events to out_dir/events.jsonl, which we tail and
send to the coordinator in batches. Its stdout and stderr go to out_dir/engine.log; when
it crashes, the last lines of that log are relayed too, so the user sees the traceback
without logging into the worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format

from tunefleet.spec import spec_to_dict
from tunefleet.v1 import job_pb2, spec_pb2

log = logging.getLogger(__name__)

# (spec, spec_path, out_dir, events_path) -> argv of the training process.
CommandFactory = Callable[[spec_pb2.JobSpec, Path, Path, Path], list[str]]
# Sends a batch of events for this attempt; False when the job is no longer ours.
ReportFn = Callable[[list[job_pb2.Event]], bool]

EXIT_INVALID_INPUT = 2  # the engine's exit code for InvalidJobInput (see INTERFACES.md)
CRASH_TAIL_LINES = 20
_REASON_MAX_CHARS = 500


@dataclass(frozen=True)
class JobOutcome:
    """How an attempt ended, as FinishJob wants it."""

    state: int  # job_pb2.SUCCEEDED, FAILED or CANCELLED
    reason: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)


def engine_command(
    spec: spec_pb2.JobSpec, spec_path: Path, out_dir: Path, events_path: Path
) -> list[str]:
    """The engine's launch command (one process, or accelerate around N ranks)."""
    # Imported on use: the daemon must stay importable and light even if the engine
    # package one day imports torch at the top.
    from tunefleet.worker.engine.launch import build_command

    return build_command(spec, spec_path, out_dir, events_path)


def log_event(message: str, level: str = "info") -> job_pb2.Event:
    event = job_pb2.Event(log=job_pb2.LogLine(level=level, message=message))
    event.time.GetCurrentTime()
    return event


def write_json_atomic(path: Path, data) -> None:
    """Readers never see a half-written file: write a temp file, then rename over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class EventTail:
    """Reads the complete lines appended to an events.jsonl file since the last read."""

    def __init__(self, path: Path):
        self.path = path
        # A rerun in the same out dir appends to the old file: start at its current end,
        # on a fresh line (a crashed writer may have left half a line).
        self._offset = 0
        if path.exists():
            with path.open("rb+") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
                self._offset = f.tell()
        self._partial = b""

    def read(self) -> list[job_pb2.Event]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                events.append(
                    json_format.Parse(
                        line.decode("utf-8"), job_pb2.Event(), ignore_unknown_fields=True
                    )
                )
            except (json_format.ParseError, UnicodeDecodeError) as exc:
                log.warning("skipping an unreadable line of %s: %s", self.path, exc)
        return events


def _last_lines(path: Path, count: int, max_bytes: int = 64 * 1024) -> list[str]:
    """The last `count` non-blank lines of a (possibly huge) log file."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - max_bytes, 0))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-count:]


def _clip(text: str) -> str:
    return text if len(text) <= _REASON_MAX_CHARS else text[: _REASON_MAX_CHARS - 3] + "..."


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


class JobRunner:
    """One attempt of one job on this worker. `run` blocks; `cancel`/`stop` are thread-safe."""

    def __init__(
        self,
        job: job_pb2.Job,
        attempt: int,
        *,
        worker_id: str,
        out_dir: Path,
        cwd: Path | None = None,
        command_factory: CommandFactory | None = None,
        report_interval_s: float = 0.5,
        report_max_events: int = 50,
        kill_grace_s: float = 5.0,
    ):
        self.job = job
        self.attempt = attempt
        self.worker_id = worker_id
        self.out_dir = Path(out_dir)
        self.cwd = cwd
        self.command_factory = command_factory or engine_command
        self.report_interval_s = report_interval_s
        self.report_max_events = report_max_events
        self.kill_grace_s = kill_grace_s
        self._wake = threading.Event()
        self._stop_outcome: JobOutcome | None = None
        self._last_error = ""

    @property
    def job_id(self) -> str:
        return self.job.id

    def cancel(self, reason: str = "cancelled by user") -> None:
        """Stops the training process; the attempt ends CANCELLED."""
        self._request_stop(JobOutcome(job_pb2.CANCELLED, reason))

    def stop(self, reason: str = "worker stopped") -> None:
        """Stops the training process because the worker goes away; the attempt FAILED."""
        self._request_stop(JobOutcome(job_pb2.FAILED, reason))

    def _request_stop(self, outcome: JobOutcome) -> None:
        if self._stop_outcome is None:
            self._stop_outcome = outcome
        self._wake.set()

    def run(self, report: ReportFn) -> JobOutcome | None:
        """Runs the attempt to its end. None when the coordinator says the job is no longer
        ours (then there is nothing to report)."""
        try:
            command, events_path = self._prepare()
        except Exception as exc:
            log.exception("job %s: cannot prepare %s", self.job_id, self.out_dir)
            return JobOutcome(
                job_pb2.FAILED, _clip(f"cannot prepare the job on worker {self.worker_id}: {exc}")
            )
        if self._stop_outcome is not None:
            return self._stop_outcome
        tail = EventTail(events_path)
        try:
            process = self._start(command)
        except OSError as exc:
            return JobOutcome(job_pb2.FAILED, _clip(f"cannot start the training process: {exc}"))
        log.info(
            "job %s attempt %d: started pid %d: %s", self.job_id, self.attempt, process.pid, command
        )
        try:
            pending = [log_event(f"started on worker {self.worker_id} (pid {process.pid})")]
            if not self._relay(process, tail, pending, report):
                return None
            return self._outcome(process.returncode, report)
        finally:
            if process.poll() is None or process.returncode != 0:
                self._kill_group(process)  # no rank survives its job

    # ---- steps -------------------------------------------------------------------------

    def _prepare(self) -> tuple[list[str], Path]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.out_dir / "spec.json"
        write_json_atomic(spec_path, spec_to_dict(self.job.spec))
        # A result.json left by an earlier attempt must not pass for this attempt's.
        (self.out_dir / "result.json").unlink(missing_ok=True)
        events_path = self.out_dir / "events.jsonl"
        return self.command_factory(
            self.job.spec, spec_path, self.out_dir, events_path
        ), events_path

    def _start(self, command: list[str]) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(
            PYTHONUNBUFFERED="1",  # so engine.log holds the last lines before a crash
            TUNEFLEET_JOB_ID=self.job_id,
            TUNEFLEET_ATTEMPT=str(self.attempt),
        )
        with (self.out_dir / "engine.log").open("ab") as log_file:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
                start_new_session=True,  # its own process group: one signal reaches all ranks
            )

    def _relay(
        self,
        process: subprocess.Popen,
        tail: EventTail,
        pending: list[job_pb2.Event],
        report: ReportFn,
    ) -> bool:
        """Tails events until the process exits; False if the job is no longer ours."""
        last_sent = float("-inf")  # the "started" event goes out at once
        while True:
            exited = process.poll() is not None
            pending += self._note_errors(tail.read())
            if not exited and self._stop_outcome is not None:
                self._terminate(process)
                continue
            due = time.monotonic() - last_sent >= self.report_interval_s
            if pending and (exited or due or len(pending) >= self.report_max_events):
                if not self._send(pending, report):
                    return False
                pending.clear()
                last_sent = time.monotonic()
            if exited:
                return True
            self._wake.wait(0.1)

    def _outcome(self, code: int, report: ReportFn) -> JobOutcome:
        if self._stop_outcome is not None:
            return self._stop_outcome
        if code == 0:
            try:
                result = json.loads((self.out_dir / "result.json").read_text(encoding="utf-8"))
                return JobOutcome(
                    job_pb2.SUCCEEDED,
                    artifacts={str(k): str(v) for k, v in result.get("artifacts", {}).items()},
                    summary={str(k): float(v) for k, v in result.get("summary", {}).items()},
                )
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                reason = f"training process exited 0 but left no readable result.json ({exc})"
                self._relay_crash_tail(reason, report)
                return JobOutcome(job_pb2.FAILED, _clip(reason))
        last_lines = _last_lines(self.out_dir / "engine.log", CRASH_TAIL_LINES)
        last_line = last_lines[-1] if last_lines else ""
        if code == EXIT_INVALID_INPUT:
            if self._last_error:  # the engine explained itself in an event already
                return JobOutcome(job_pb2.FAILED, _clip(self._last_error))
            reason = last_line or "invalid job input (exit code 2)"
            self._relay_crash_tail(reason, report)
            return JobOutcome(job_pb2.FAILED, _clip(reason))
        reason = f"training process exited with code {_exit_description(code)}"
        reason += f": {last_line}" if last_line else ""
        self._relay_crash_tail(reason, report)
        return JobOutcome(job_pb2.FAILED, _clip(reason))

    def _relay_crash_tail(self, headline: str, report: ReportFn) -> None:
        lines = _last_lines(self.out_dir / "engine.log", CRASH_TAIL_LINES)
        events = [log_event(f"{headline}; last lines of engine.log:", "error")]
        events += [log_event(line, "error") for line in lines]
        self._send(events, report)

    # ---- helpers -----------------------------------------------------------------------

    def _note_errors(self, events: list[job_pb2.Event]) -> list[job_pb2.Event]:
        for event in events:
            if event.WhichOneof("kind") == "log" and event.log.level == "error":
                self._last_error = event.log.message
        return events

    def _send(self, events: list[job_pb2.Event], report: ReportFn) -> bool:
        for start in range(0, len(events), self.report_max_events):
            if not report(events[start : start + self.report_max_events]):
                log.warning(
                    "job %s attempt %d is no longer ours; stopping it", self.job_id, self.attempt
                )
                return False
        return True

    def _terminate(self, process: subprocess.Popen) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after the grace period."""
        self._signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=self.kill_grace_s)
        except subprocess.TimeoutExpired:
            log.warning("job %s: pid %d ignored SIGTERM; killing", self.job_id, process.pid)
        self._kill_group(process)

    def _kill_group(self, process: subprocess.Popen) -> None:
        self._signal_group(process, signal.SIGKILL)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("job %s: pid %d survived SIGKILL", self.job_id, process.pid)

    @staticmethod
    def _signal_group(process: subprocess.Popen, sig: int) -> None:
        # start_new_session: the group id is the child's pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

"""JobRunner: runs one job attempt as a child process and relays its events.

The training process is the engine (`python -m tunefleet.worker.engine ...`, or the
accelerate launcher around it; a single process is forked warm by the worker's engine host
when it can be: engine_process.py). It runs in its own process group, so a cancel reaches
every rank it started, and it appends events to out_dir/attempts/N/events.jsonl, which we
tail and send to the coordinator in batches. Its stdout and stderr go to
out_dir/attempts/N/engine.log; when it crashes, the last lines of that log are relayed too,
so the user sees the traceback without logging into the worker.

Every attempt of a job runs in the same out_dir (storage shared by the workers), so the
engine resumes from the newest checkpoint there (without shared storage, the daemon first
brings the newest uploaded one into the worker's out_dir: worker/checkpoint_sync.py); only
the event file and the log are per attempt, so a stale attempt's process can never pass
its lines off as the current one's.

A multi-node job runs one JobRunner per member worker, all in the same out_dir. Machine
rank 0 is the one described above. On the others (rendezvous.machine_rank > 0) the engine's
processes write no events, checkpoints or results (only the global main process does), and
the runner keeps to its own folder, out_dir/attempts/N/machine-R/ (spec.json, engine.log,
events.jsonl): it neither clears rank 0's result.json nor reports anything but log lines,
and exit 0 means its part is done (the job's result is rank 0's).

How an attempt ends, and what the daemon tells the coordinator (JobOutcome.state):
  exit 0 + result.json     SUCCEEDED
  exit 2                   FAILED (invalid input: retrying cannot help)
  exit 75                  QUEUED: the engine checkpointed and stopped on SIGTERM
                           (preempted); ReleaseJob, not counted as a restart
  any other exit/signal    FAILED with retryable: a crash, restarted per train.max_restarts
  drain()                  SIGTERM, up to drain_grace_s to checkpoint, then QUEUED
  cancel()                 SIGTERM, then CANCELLED
  abandon()                the job is no longer ours: SIGKILL at once (no checkpoint may
                           race the attempt that replaced us), nothing reported
  lease lost               as abandon, then QUEUED (ReleaseJob; refused if the job moved on)
"""

from __future__ import annotations

import contextlib
import functools
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

from tunefleet.limits import clip_chars
from tunefleet.spec import spec_to_dict
from tunefleet.v1 import coordinator_pb2, job_pb2, spec_pb2
from tunefleet.worker.engine import lineage
from tunefleet.worker.engine.errors import EXIT_INVALID_INPUT, EXIT_NO_SPACE, is_no_space
from tunefleet.worker.engine_process import EngineHost, TrainingProcess, start_engine_process
from tunefleet.worker.event_tail import EventTail, log_event, read_events
from tunefleet.worker.tensorboard_writer import TENSORBOARD_DIR, TensorBoardWriter

log = logging.getLogger(__name__)

# (spec, spec_path, out_dir, events_path) -> argv of the training process.
CommandFactory = Callable[[spec_pb2.JobSpec, Path, Path, Path], list[str]]
# Sends a batch of events for this attempt; False when the job is no longer ours.
ReportFn = Callable[[list[job_pb2.Event]], bool]

EXIT_PREEMPTED = 75  # the engine checkpointed and stopped on SIGTERM (EX_TEMPFAIL)
CRASH_TAIL_LINES = 20
_REASON_MAX_CHARS = 500


@dataclass(frozen=True)
class JobOutcome:
    """How an attempt ended, as FinishJob wants it."""

    # job_pb2.SUCCEEDED, FAILED or CANCELLED (FinishJob), or QUEUED: give the job back
    # unfinished (ReleaseJob).
    state: int
    reason: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    # FAILED only: a crash, which a restart may get past (FinishJob.retryable).
    retryable: bool = False
    # Non-empty: the attempt failed because of this worker, not the job (its artifacts disk
    # is full); the worker takes no more jobs until the cause is gone (see the daemon).
    unhealthy: str = ""


def engine_command(
    spec: spec_pb2.JobSpec,
    spec_path: Path,
    out_dir: Path,
    events_path: Path,
    *,
    rendezvous: coordinator_pb2.Rendezvous | None = None,
) -> list[str]:
    """The engine's launch command (one process, or accelerate around N ranks on one or
    several machines)."""
    # Imported on use: the daemon must stay importable and light even if the engine
    # package one day imports torch at the top.
    from tunefleet.worker.engine.launch import build_command

    return build_command(spec, spec_path, out_dir, events_path, rendezvous=rendezvous)


def write_json_atomic(path: Path, data) -> None:
    """Readers never see a half-written file: write a temp file, then rename over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _newest_checkpoint_step(root: Path) -> int | None:
    """The step of the checkpoint the engine resumes from: the newest complete one
    (checkpoints/step-NNNNNNN/ with its MANIFEST.json; see worker/engine/checkpoint.py,
    which needs torch, so the layout is read here directly)."""
    steps = [
        int(path.name[len("step-") :])
        for path in (root.glob("step-*") if root.is_dir() else ())
        if path.name[len("step-") :].isdigit() and (path / "MANIFEST.json").is_file()
    ]
    return max(steps, default=None)


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
    return clip_chars(text, _REASON_MAX_CHARS)


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
        drain_grace_s: float = 30.0,
        lease_valid: Callable[[], bool] = lambda: True,
        rendezvous: coordinator_pb2.Rendezvous | None = None,
        own_storage: bool = False,
        engine_env: dict[str, str] | None = None,
        engine_host: EngineHost | None = None,
        submitted_spec_hash: str = "",
    ):
        """
        Args:
            command_factory: builds the training command; default: the engine's launcher.
                For a multi-node job a custom factory finds its machine in the environment
                (TUNEFLEET_MACHINE_RANK, _NUM_MACHINES, _MAIN_PROCESS_IP, _MAIN_PROCESS_PORT).
            kill_grace_s: after SIGTERM on cancel, how long before SIGKILL.
            drain_grace_s: after SIGTERM on drain, how long the engine has to finish its
                step and write a checkpoint before SIGKILL.
            lease_valid: False once the worker could not renew its lease for a whole lease
                period: the coordinator may have given the job to another worker, so the
                training process is killed at once (self-fencing).
            rendezvous: this worker's machine in a multi-node job (the Assignment's).
            own_storage: out_dir is on the worker's own storage (its --artifacts folder),
                not a folder the job chose: a full disk there is the worker's problem (the
                job is released, the worker becomes unhealthy), not the job's.
            engine_env: extra environment of the training process (the worker's shared
                feature cache: worker/engine/shared_features.py).
            engine_host: forks the training process warm when it can (engine_process.py).
            submitted_spec_hash: lineage.spec_hash of the spec as submitted, when `job`'s
                names this worker's cached copies of its URLs (default: `job`'s own).
        """
        self.job = job
        self.spec_hash = submitted_spec_hash or lineage.spec_hash(job.spec)
        self.attempt = attempt
        self.worker_id = worker_id
        self.out_dir = Path(out_dir)
        self.cwd = cwd
        self.rendezvous = rendezvous
        self.machine_rank = rendezvous.machine_rank if rendezvous is not None else 0
        self.command_factory = command_factory or functools.partial(
            engine_command, rendezvous=rendezvous
        )
        self.report_interval_s = report_interval_s
        self.report_max_events = report_max_events
        self.kill_grace_s = kill_grace_s
        self.drain_grace_s = drain_grace_s
        self.lease_valid = lease_valid
        self.own_storage = own_storage
        self.engine_env = dict(engine_env or {})
        self.engine_host = engine_host
        self.warm = False  # the training process was forked by the engine host
        self.attempt_dir = self.out_dir / "attempts" / str(attempt)
        if self.machine_rank > 0:
            self.attempt_dir /= f"machine-{self.machine_rank}"
        self._wake = threading.Event()
        self._stop_outcome: JobOutcome | None = None
        self._hard_stop = False  # SIGKILL, no chance to checkpoint
        self._abandoned = False
        self._lease_lost = False
        self._last_error = ""
        self.done = False  # run() returned: stop requests change nothing any more

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def fenced(self) -> bool:
        """The job may run elsewhere now: taken away, or our lease ran out while it trained.
        Stays True when a later heartbeat renews the lease (the job was requeued meanwhile)."""
        return self._abandoned or self._lease_lost

    def cancel(self, reason: str = "cancelled by user") -> None:
        """Stops the training process; the attempt ends CANCELLED."""
        self._request_stop(JobOutcome(job_pb2.CANCELLED, reason))

    def drain(self, reason: str = "worker draining", *, hard: bool = False) -> None:
        """The worker goes away: SIGTERM, so the engine checkpoints and stops (hard: SIGKILL
        now); the attempt ends QUEUED and resumes elsewhere. A finished run still counts."""
        self._request_stop(JobOutcome(job_pb2.QUEUED, reason), hard=hard)

    def abandon(self) -> None:
        """The job is no longer ours: SIGKILL the training process, report nothing more."""
        self._abandoned = True
        self._request_stop(JobOutcome(job_pb2.QUEUED, "abandoned"), hard=True)

    def _request_stop(self, outcome: JobOutcome, *, hard: bool = False) -> None:
        if self._stop_outcome is None:
            self._stop_outcome = outcome
        self._hard_stop = self._hard_stop or hard
        self._wake.set()

    def run(self, report: ReportFn) -> JobOutcome | None:
        """Runs the attempt to its end. None when the coordinator says the job is no longer
        ours (then there is nothing to report)."""
        try:
            return self._run(report)
        finally:
            self.done = True

    def _run(self, report: ReportFn) -> JobOutcome | None:
        try:
            command, events_path = self._prepare()
        except Exception as exc:
            if is_no_space(exc):
                return self.no_space_outcome(str(exc))
            log.exception("job %s: cannot prepare %s", self.job_id, self.out_dir)
            return JobOutcome(
                job_pb2.FAILED, _clip(f"cannot prepare the job on worker {self.worker_id}: {exc}")
            )
        if self._stop_outcome is not None:
            return self._stop_outcome
        tail = EventTail(events_path)
        tensorboard = TensorBoardWriter(
            self.out_dir / TENSORBOARD_DIR, filename_suffix=f".attempt-{self.attempt}"
        )
        report = tensorboard.tee(report)  # metrics also go to OUT_DIR/tensorboard
        try:
            process = self._start(command)
        except OSError as exc:
            return JobOutcome(job_pb2.FAILED, _clip(f"cannot start the training process: {exc}"))
        log.info(
            "job %s attempt %d: started pid %d: %s", self.job_id, self.attempt, process.pid, command
        )
        try:
            where = f"worker {self.worker_id}"
            if self.rendezvous is not None:
                where += f", machine rank {self.machine_rank} of {self.rendezvous.num_machines}"
            how = " in a warm engine process" if self.warm else ""
            pending = [log_event(f"started on {where}{how} (pid {process.pid})")]
            if self.machine_rank == 0:
                pending += self._unrelayed_metrics()
            if not self._relay(process, tail, pending, report) or self._abandoned:
                return None
            return self._outcome(process.returncode, report)
        finally:
            tensorboard.close()
            if process.poll() is None or process.returncode != 0:
                self._kill_group(process)  # no rank survives its job

    # ---- steps -------------------------------------------------------------------------

    def _unrelayed_metrics(self) -> list[job_pb2.Event]:
        """Metrics of earlier attempts up to the checkpoint this attempt resumes from.

        A worker killed with -9 had not relayed its last events (up to report_interval_s of
        them). The steps after the checkpoint are trained and reported again; the ones
        before it would be missing from the job's metrics. Earlier attempts' event files
        are in the shared out dir, so we send their metrics again: the coordinator stores
        only the steps it has not seen (JobStore.append_report), the rest are dropped.
        """
        resume_step = _newest_checkpoint_step(self.out_dir / "checkpoints")
        if self.attempt <= 1 or resume_step is None:
            return []
        metrics = []
        for attempt in range(1, self.attempt):
            path = self.out_dir / "attempts" / str(attempt) / "events.jsonl"
            for event in read_events(path):
                if event.WhichOneof("kind") == "metrics" and event.metrics.step <= resume_step:
                    metrics.append(event)
        return metrics

    def _prepare(self) -> tuple[list[str], Path]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.attempt_dir.mkdir(parents=True, exist_ok=True)
        if self.machine_rank == 0:
            spec_path = self.out_dir / "spec.json"
            # A result.json left by an earlier attempt must not pass for this attempt's.
            (self.out_dir / "result.json").unlink(missing_ok=True)
        else:  # rank 0 writes the shared one at the same moment
            spec_path = self.attempt_dir / "spec.json"
        write_json_atomic(spec_path, spec_to_dict(self.job.spec))
        events_path = self.attempt_dir / "events.jsonl"
        return self.command_factory(
            self.job.spec, spec_path, self.out_dir, events_path
        ), events_path

    def _start(self, command: list[str]) -> TrainingProcess:
        env = {**os.environ, **self.engine_env}
        env.update(
            PYTHONUNBUFFERED="1",  # so engine.log holds the last lines before a crash
            TUNEFLEET_JOB_ID=self.job_id,
            TUNEFLEET_ATTEMPT=str(self.attempt),
            **{lineage.SPEC_HASH_ENV: self.spec_hash},
        )
        if self.rendezvous is not None:
            env.update(
                TUNEFLEET_MACHINE_RANK=str(self.machine_rank),
                TUNEFLEET_NUM_MACHINES=str(self.rendezvous.num_machines),
                TUNEFLEET_MAIN_PROCESS_IP=self.rendezvous.main_process_ip,
                TUNEFLEET_MAIN_PROCESS_PORT=str(self.rendezvous.main_process_port),
            )
        with (self.attempt_dir / "engine.log").open("ab") as log_file:
            process, self.warm = start_engine_process(
                command, env=env, cwd=self.cwd, log_file=log_file, host=self.engine_host
            )
        return process

    def _relay(
        self,
        process: TrainingProcess,
        tail: EventTail,
        pending: list[job_pb2.Event],
        report: ReportFn,
    ) -> bool:
        """Tails events until the process exits; False if the job is no longer ours."""
        last_sent = float("-inf")  # the "started" event goes out at once
        relayed = threading.Event()
        # The lease is also watched on a thread of its own: this loop can wait for a while
        # in report() (the coordinator is away, and reports are retried), and a process
        # whose lease ran out must not train on meanwhile (it would have, through a whole
        # coordinator outage).
        watch = threading.Thread(
            target=self._watch_lease, args=(process, relayed), name="tunefleet-fence", daemon=True
        )
        watch.start()
        try:
            return self._relay_until_exit(process, tail, pending, report, last_sent)
        finally:
            relayed.set()

    def _watch_lease(self, process: TrainingProcess, relayed: threading.Event) -> None:
        while not relayed.wait(0.1) and process.poll() is None:
            if self._fence_if_lease_lost(process):
                self._kill_group(process)
                return

    def _fence_if_lease_lost(self, process: TrainingProcess) -> bool:
        """Requests a hard stop if the process runs and our lease may have run out."""
        if process.poll() is not None or self.lease_valid() or self._hard_stop:
            return False
        self._lease_lost = True
        log.error(
            "job %s attempt %d: lease lost; killing the training process",
            self.job_id,
            self.attempt,
        )
        self._request_stop(
            JobOutcome(
                job_pb2.QUEUED,
                f"worker {self.worker_id} could not renew its lease in time and "
                "killed the training process",
            ),
            hard=True,
        )
        return True

    def _relay_until_exit(self, process, tail, pending, report, last_sent) -> bool:
        while True:
            exited = process.poll() is not None
            pending += self._note_errors(tail.read())
            if not exited:
                self._fence_if_lease_lost(process)
            if not exited and self._stop_outcome is not None:
                if self._hard_stop:
                    self._kill_group(process)
                else:
                    cancelling = self._stop_outcome.state == job_pb2.CANCELLED
                    self._terminate(
                        process, self.kill_grace_s if cancelling else self.drain_grace_s
                    )
                continue
            if self._abandoned:
                return True
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
        stop = self._stop_outcome
        if stop is not None and stop.state != job_pb2.QUEUED:
            return stop  # cancelled: however the process ended
        if code == 0 and self.machine_rank > 0:
            return JobOutcome(job_pb2.SUCCEEDED, f"machine rank {self.machine_rank} finished")
        if code == 0:  # done, even if a drain came too late to matter
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
        if stop is not None:
            return stop  # drained: the engine checkpointed if it could; resume elsewhere
        if code == EXIT_PREEMPTED:
            return JobOutcome(
                job_pb2.QUEUED,
                f"training process on worker {self.worker_id} was preempted (SIGTERM): it "
                f"checkpointed and stopped (exit {EXIT_PREEMPTED})",
            )
        last_lines = _last_lines(self.attempt_dir / "engine.log", CRASH_TAIL_LINES)
        last_line = last_lines[-1] if last_lines else ""
        if code == EXIT_NO_SPACE:
            return self.no_space_outcome(self._last_error)
        if code == EXIT_INVALID_INPUT:
            if self._last_error:  # the engine explained itself in an event already
                return JobOutcome(job_pb2.FAILED, _clip(self._last_error))
            reason = last_line or "invalid job input (exit code 2)"
            self._relay_crash_tail(reason, report)
            return JobOutcome(job_pb2.FAILED, _clip(reason))
        reason = f"training process exited with code {_exit_description(code)}"
        reason += f": {last_line}" if last_line else ""
        self._relay_crash_tail(reason, report)
        return JobOutcome(job_pb2.FAILED, _clip(reason), retryable=True)

    def no_space_outcome(self, detail: str = "") -> JobOutcome:
        """The disk the job writes to is full. On the worker's own storage that is the
        worker's fault: release the job for another worker and stop taking jobs. In the
        folder the job chose (output.dir) it is the job's: fail once, with the reason (its
        next attempt would find the same disk full)."""
        detail = f" ({_clip(detail)})" if detail else ""
        if self.own_storage:
            return JobOutcome(
                job_pb2.QUEUED,
                f"worker {self.worker_id} ran out of disk space for job outputs{detail}; the "
                "job is released for another worker",
                unhealthy=f"no space left on device in its artifacts folder {self.out_dir.parent}",
            )
        return JobOutcome(
            job_pb2.FAILED,
            _clip(
                f"disk full: no space left on device in output.dir {self.out_dir}{detail}; "
                "free space there or choose another output.dir"
            ),
        )

    def _relay_crash_tail(self, headline: str, report: ReportFn) -> None:
        lines = _last_lines(self.attempt_dir / "engine.log", CRASH_TAIL_LINES)
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
        if self.machine_rank > 0:  # rank 0 reports the job's metrics, once
            events = [e for e in events if e.WhichOneof("kind") == "log"]
        for start in range(0, len(events), self.report_max_events):
            if not report(events[start : start + self.report_max_events]):
                log.warning(
                    "job %s attempt %d is no longer ours; stopping it", self.job_id, self.attempt
                )
                return False
        return True

    def _terminate(self, process: TrainingProcess, grace_s: float) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after the grace period."""
        self._signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("job %s: pid %d ignored SIGTERM; killing", self.job_id, process.pid)
        self._kill_group(process)

    def _kill_group(self, process: TrainingProcess) -> None:
        self._signal_group(process, signal.SIGKILL)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("job %s: pid %d survived SIGKILL", self.job_id, process.pid)

    @staticmethod
    def _signal_group(process: TrainingProcess, sig: int) -> None:
        # start_new_session: the group id is the child's pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

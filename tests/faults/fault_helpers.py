"""Real processes for the fault-injection tests: a coordinator (`python -m
tunefleet.coordinator`) and workers (`python -m tunefleet.worker`) as children in their own
sessions, signalled for real (SIGKILL, SIGTERM, SIGSTOP/SIGCONT), plus a gRPC view of the
coordinator and the checks every test makes on a job's events.

Nothing here mocks our code: the tests see what a user and an operator would see.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2

RPC_TIMEOUT = 10.0
# Seconds; generous because CI machines are slow and shared. The tests take far less.
STARTUP_TIMEOUT = 60.0
JOB_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Polls until `predicate` returns something truthy and returns it; fails on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"  # a zombie is dead for us
    except (OSError, IndexError):
        return False


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc: the tests run on Linux, like the workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(") ", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    out = []
    for child in children(pid):
        out += [child, *descendants(child)]
    return out


def subprocess_env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        # One intra-op thread per training process: on a loaded 2-core machine, torch's
        # spinning OpenMP threads burn several times the CPU the tiny model needs.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


class Proc:
    """A child process in its own session with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=subprocess_env(),
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def destroy(self) -> None:
        """Teardown: this process, everything it started, and its process group, gone."""
        if self.popen is None:
            return
        family = [self.pid, *descendants(self.pid)] if self.alive() else []
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a stopped process must run to die cleanly
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


class Cluster:
    """One coordinator and any number of workers, all real child processes, sharing one
    artifacts folder (the shared storage every attempt's out dir lives on)."""

    def __init__(self, root: Path, *, heartbeat_s: float = 0.5, lease_s: float = 2.5):
        self.root = root
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.port = free_port()
        self.db = root / "coordinator.db"
        self.artifacts = root / "artifacts"
        self.procs: list[Proc] = []
        self.coordinator: Proc | None = None
        self.workers: dict[str, Proc] = {}
        self._restarts = 0
        self._seen: dict[str, list[job_pb2.Event]] = {}  # events are immutable once stored
        self.channel = grpc.insecure_channel(self.address)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ---- processes ---------------------------------------------------------------------

    def start_coordinator(self) -> Proc:
        argv = [
            sys.executable,
            "-m",
            "tunefleet.coordinator",
            "--listen",
            self.address,
            "--db",
            str(self.db),
            "--heartbeat-s",
            str(self.heartbeat_s),
            "--lease-s",
            str(self.lease_s),
        ]
        self._restarts += 1
        proc = Proc("coordinator", argv, self.root / f"coordinator-{self._restarts}.log").start()
        self.procs.append(proc)
        self.coordinator = proc
        wait_for(self._serving, STARTUP_TIMEOUT, "the coordinator to serve")
        return proc

    def kill_coordinator(self) -> None:
        self.coordinator.kill9()

    def start_worker(
        self,
        worker_id: str,
        *,
        drain_grace_s: float = 30.0,
        tmpfs: dict[Path, str] | None = None,
        extra_args: tuple[str, ...] = (),
        name: str | None = None,
    ) -> Proc:
        """A worker process, known to the test as `name` (default: its id; another name
        starts a second process with the same --id). `tmpfs` ({folder: size, e.g. "64m"}) runs it in a mount
        namespace of its own (unshare -m; the tests run as root) where each folder is a
        fresh tmpfs of that size: a disk that only this worker sees, which the test can fill
        and empty through /proc/PID/root (see in_worker_mounts)."""
        argv = [
            sys.executable,
            "-m",
            "tunefleet.worker",
            "--coordinator",
            self.address,
            "--artifacts",
            str(self.artifacts),
            "--gpus",
            "0",
            "--id",
            worker_id,
            "--poll-s",
            "0.5",
            "--drain-grace-s",
            str(drain_grace_s),
            *extra_args,
        ]
        if tmpfs:
            mounts = " && ".join(
                f"mkdir -p '{folder}' && mount -t tmpfs -o size={size} tmpfs '{folder}'"
                for folder, size in tmpfs.items()
            )
            argv = ["unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh", *argv]
        name = name or worker_id
        proc = Proc(name, argv, self.root / f"{name}.log").start()
        self.procs.append(proc)
        self.workers[name] = proc
        return proc

    def wait_worker_live(self, worker_id: str) -> None:
        wait_for(
            lambda: self.worker_state(worker_id) == coordinator_pb2.LIVE,
            STARTUP_TIMEOUT,
            f"worker {worker_id} to register",
        )

    def destroy(self) -> None:
        for proc in reversed(self.procs):
            proc.destroy()
        self.channel.close()

    # ---- the coordinator's view ------------------------------------------------------------

    def _serving(self) -> bool:
        try:
            self.stub.ListWorkers(coordinator_pb2.ListWorkersRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
        return True

    def submit(self, spec, key: str = "") -> job_pb2.Job:
        request = coordinator_pb2.SubmitJobRequest(spec=spec, idempotency_key=key)
        return self.stub.SubmitJob(request, timeout=RPC_TIMEOUT)

    def job(self, job_id: str) -> job_pb2.Job:
        return self.stub.GetJob(coordinator_pb2.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)

    def jobs(self) -> list[job_pb2.Job]:
        return list(self.stub.ListJobs(coordinator_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT).jobs)

    def events(self, job_id: str, after_seq: int = 0) -> list[job_pb2.Event]:
        request = coordinator_pb2.StreamEventsRequest(job_id=job_id, after_seq=after_seq)
        return list(self.stub.StreamEvents(request, timeout=RPC_TIMEOUT))

    def events_so_far(self, job_id: str) -> list[job_pb2.Event]:
        """All events, fetching only the new ones (cheap enough to poll)."""
        seen = self._seen.setdefault(job_id, [])
        seen += self.events(job_id, seen[-1].seq if seen else 0)
        return list(seen)

    def worker_state(self, worker_id: str) -> int | None:
        try:
            response = self.stub.ListWorkers(
                coordinator_pb2.ListWorkersRequest(), timeout=RPC_TIMEOUT
            )
        except grpc.RpcError:
            return None
        return next((w.state for w in response.workers if w.id == worker_id), None)

    def wait_job(
        self, job_id: str, predicate: Callable[[job_pb2.Job], bool], what: str, timeout=JOB_TIMEOUT
    ) -> job_pb2.Job:
        def check():
            try:
                job = self.job(job_id)
            except grpc.RpcError:
                return None  # the coordinator is restarting
            return job if predicate(job) else None

        return wait_for(check, timeout, what, 0.2)

    def wait_step(self, job_id: str, attempt: int, step: int) -> int:
        """Waits until `attempt` reported a train step >= `step`; returns that step."""

        def reached():
            try:
                events = self.events_so_far(job_id)
            except grpc.RpcError:
                return None
            steps = [s for s in train_steps(events, attempt=attempt) if s >= step]
            return steps[0] if steps else None

        return wait_for(reached, JOB_TIMEOUT, f"attempt {attempt} to reach step {step}", 0.2)

    def last_step(self, job_id: str, attempt: int) -> int:
        """The last train step of `attempt` a follower has seen."""
        return max(train_steps(self.events_so_far(job_id), attempt=attempt), default=0)

    def integrity_check(self) -> str:
        db = sqlite3.connect(self.db)
        try:
            return db.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            db.close()


def in_worker_mounts(proc: Proc, path: Path) -> Path:
    """`path` as the worker `proc` sees it (its own mount namespace, see start_worker)."""
    return Path(f"/proc/{proc.pid}/root") / Path(path).relative_to("/")


def fill_disk(folder: Path) -> Path:
    """Writes `folder`/fill until the disk is full; returns the file (delete it to free)."""
    fill = folder / "fill"
    chunk = b"\0" * (1 << 20)
    with contextlib.suppress(OSError), fill.open("wb") as f:
        while True:
            f.write(chunk)
            f.flush()
    with contextlib.suppress(OSError), fill.open("ab") as f:  # the last partial chunk
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return fill


# ---- what the events say ----------------------------------------------------------------


def train_steps(events, *, attempt: int | None = None, phase: str = "train") -> list[int]:
    return [
        e.metrics.step
        for e in events
        if e.WhichOneof("kind") == "metrics"
        and e.metrics.phase == phase
        and (attempt is None or e.attempt == attempt)
    ]


def messages(events, *, attempt: int | None = None) -> list[str]:
    return [
        e.log.message
        for e in events
        if e.WhichOneof("kind") == "log" and (attempt is None or e.attempt == attempt)
    ]


def state_changes(events) -> list[tuple[str, str, int]]:
    return [
        (job_pb2.JobState.Name(e.state_change.state), e.state_change.reason, e.attempt)
        for e in events
        if e.WhichOneof("kind") == "state_change"
    ]


def engine_pid(events, attempt: int) -> int:
    """The training process's pid, from the worker's "started on worker X (pid N)" event."""
    for message in messages(events, attempt=attempt):
        if message.startswith("started on worker ") and "(pid " in message:
            return int(message.split("(pid ")[1].rstrip(")"))
    raise AssertionError(f"attempt {attempt} has no 'started' event")


def resumed_from(events, attempt: int) -> int | None:
    """The step the engine of `attempt` resumed from ("resumed from step-0000030: ...")."""
    for message in messages(events, attempt=attempt):
        if message.startswith("resumed from step-"):
            return int(message.split("step-")[1].split(":")[0])
    return None


def event_time(event) -> float:
    return event.time.ToNanoseconds() / 1e9


def check_events(events) -> str:
    """What every fault test requires of a job's events, as a follower sees them: seq
    1, 2, 3... without a gap or a repeat; every train step (the fault jobs log each one)
    exactly once and in order across attempts, eval steps once and in order; and an
    event's attempt never going back. Returns a summary."""
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1)), f"seq not contiguous: {seqs}"
    train = train_steps(events)
    assert train == list(range(1, len(train) + 1)), f"train steps repeat or miss: {train}"
    evals = train_steps(events, phase="eval")
    assert evals == sorted(set(evals)), f"eval steps repeat or go back: {evals}"
    attempts = [e.attempt for e in events]
    assert attempts == sorted(attempts), f"an event of an older attempt came late: {attempts}"
    return f"events contiguous (seq 1..{len(events)}, train steps 1..{len(train)} each once)"


def finished_steps(events) -> str:
    metrics = [
        e.metrics
        for e in events
        if e.WhichOneof("kind") == "metrics" and e.metrics.phase == "train"
    ]
    last = metrics[-1]
    assert last.step == last.total_steps, f"ended at step {last.step} of {last.total_steps}"
    return f"finished {last.step}/{last.total_steps} steps"


def report(line: str) -> None:
    """The one line each fault test prints (run pytest with -s to see them)."""
    print(f"\n[fault] {line}", flush=True)

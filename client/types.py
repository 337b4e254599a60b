"""Plain Python views of the coordinator's messages: a str Enum and frozen dataclasses.

Each type has `from_proto`; `Job.spec` stays a `JobSpec` message (it is the contract,
and `tunefleet.spec.spec_to_dict` turns it into YAML-shaped data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Literal, Union

from google.protobuf import timestamp_pb2

from tunefleet.v1 import coordinator_pb2, job_pb2, spec_pb2

__all__ = [
    "Event",
    "EventKind",
    "Job",
    "JobMember",
    "JobState",
    "LogLine",
    "Metrics",
    "Payload",
    "Report",
    "StateChange",
    "Worker",
    "timestamp_to_datetime",
]


class JobState(str, Enum):
    """A job's lifecycle state; the values are the proto enum's names."""

    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    # A sweep's trial its pruner stopped early (not a failure).
    PRUNED = "PRUNED"

    def __str__(self) -> str:
        return self.value

    def is_terminal(self) -> bool:
        """SUCCEEDED, FAILED, CANCELLED and PRUNED never change again."""
        return self in _TERMINAL

    def to_proto(self) -> int:
        return job_pb2.JobState.Value(self.value)

    @classmethod
    def from_proto(cls, value: int) -> JobState:
        try:
            return cls(job_pb2.JobState.Name(value))
        except ValueError:
            raise ValueError(f"unknown job state {value}") from None

    @classmethod
    def parse(cls, value: JobState | str | int) -> JobState:
        """Accept a JobState, its name in any case ("running"), or the proto number."""
        if isinstance(value, JobState):
            return value
        if isinstance(value, int):
            return cls.from_proto(value)
        try:
            return cls(value.strip().upper())
        except ValueError:
            allowed = ", ".join(s.value.lower() for s in cls)
            raise ValueError(f"unknown job state {value!r}; expected one of: {allowed}") from None


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PRUNED})


def timestamp_to_datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    """An aware UTC datetime (protobuf's own ToDatetime is naive by default)."""
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=timezone.utc)


def _opt_time(msg, name: str) -> datetime | None:
    return timestamp_to_datetime(getattr(msg, name)) if msg.HasField(name) else None


@dataclass(frozen=True)
class JobMember:
    """One worker's part in a multi-node job (one machine rank); rank 0 runs the global
    main process and its end decides the job's."""

    rank: int
    worker_id: str
    address: str
    state: JobState
    reason: str = ""

    @classmethod
    def from_proto(cls, msg: job_pb2.JobMember) -> JobMember:
        return cls(
            rank=msg.rank,
            worker_id=msg.worker_id,
            address=msg.address,
            state=JobState.from_proto(msg.state),
            reason=msg.reason,
        )


def _with_prefix(summary: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :]: v for k, v in summary.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class Job:
    """A job as the coordinator last reported it."""

    id: str
    name: str
    state: JobState
    reason: str
    attempt: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str
    artifacts: dict[str, str]
    summary: dict[str, float]
    spec: spec_pb2.JobSpec = field(repr=False)
    last_seq: int
    updated_at: datetime | None = None
    cancel_requested: bool = False
    # Who submitted it (the token's name); "" on a coordinator without tokens.
    submitter: str = ""
    # Multi-node jobs: the workers of the latest placement, rank 0 first (worker_id is
    # rank 0's), and HOST:PORT of their rendezvous. Empty for single-node jobs.
    members: tuple[JobMember, ...] = ()
    rendezvous: str = ""
    # Restarts after the training process crashed (train.max_restarts caps them); lost or
    # drained workers' requeues are not counted.
    restarts: int = 0
    # A QUEUED job waiting out a retry backoff is not placed before this time.
    not_before: datetime | None = None

    @property
    def priority(self) -> int:
        return self.spec.priority

    def is_terminal(self) -> bool:
        return self.state.is_terminal()

    @property
    def validation_metrics(self) -> dict[str, float]:
        """The validation set's figures (accuracy, macro_f1, loss) at the checkpoint they
        chose: `eval_*` in `summary`. Optimistic by construction; see `test_metrics`."""
        return _with_prefix(self.summary, "eval_")

    @property
    def test_metrics(self) -> dict[str, float]:
        """The test set's figures for the exported model, evaluated once after training:
        `test_*` in `summary`; empty when the job has no test set."""
        return _with_prefix(self.summary, "test_")

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish (or to now while running); None if never started."""
        if self.started_at is None:
            return None
        end = self.finished_at or datetime.now(timezone.utc)
        return max(0.0, (end - self.started_at).total_seconds())

    @classmethod
    def from_proto(cls, msg: job_pb2.Job) -> Job:
        spec = spec_pb2.JobSpec()
        spec.CopyFrom(msg.spec)
        return cls(
            id=msg.id,
            name=msg.spec.name,
            state=JobState.from_proto(msg.state),
            reason=msg.reason,
            attempt=msg.attempt,
            created_at=_opt_time(msg, "created_at"),
            started_at=_opt_time(msg, "started_at"),
            finished_at=_opt_time(msg, "finished_at"),
            worker_id=msg.worker_id,
            artifacts=dict(msg.artifacts),
            summary=dict(msg.summary),
            spec=spec,
            last_seq=msg.last_seq,
            updated_at=_opt_time(msg, "updated_at"),
            cancel_requested=msg.cancel_requested,
            submitter=msg.submitter,
            members=tuple(JobMember.from_proto(m) for m in msg.members),
            rendezvous=msg.rendezvous,
            restarts=msg.restarts,
            not_before=_opt_time(msg, "not_before"),
        )


@dataclass(frozen=True)
class StateChange:
    state: JobState
    reason: str

    @classmethod
    def from_proto(cls, msg: job_pb2.StateChange) -> StateChange:
        return cls(state=JobState.from_proto(msg.state), reason=msg.reason)


@dataclass(frozen=True)
class LogLine:
    level: str  # debug | info | warning | error
    message: str

    @classmethod
    def from_proto(cls, msg: job_pb2.LogLine) -> LogLine:
        return cls(level=msg.level or "info", message=msg.message)


@dataclass(frozen=True)
class Metrics:
    """Training progress (phase "train"), or results in `values`: the validation set's
    (phase "eval", each evaluation) or the test set's (phase "test", once, at the end)."""

    phase: str
    step: int
    epoch: float
    loss: float | None = None
    lr: float | None = None
    lr_groups: dict[str, float] = field(default_factory=dict)
    samples_per_s: float | None = None
    values: dict[str, float] = field(default_factory=dict)
    total_steps: int = 0

    @classmethod
    def from_proto(cls, msg: job_pb2.Metrics) -> Metrics:
        def opt(name: str) -> float | None:
            return getattr(msg, name) if msg.HasField(name) else None

        return cls(
            phase=msg.phase,
            step=msg.step,
            epoch=msg.epoch,
            loss=opt("loss"),
            lr=opt("lr"),
            lr_groups=dict(msg.lr_groups),
            samples_per_s=opt("samples_per_s"),
            values=dict(msg.values),
            total_steps=msg.total_steps,
        )


@dataclass(frozen=True)
class Report:
    """A table (the freeze plan, a compression report); `text` is pre-rendered."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    text: str

    @classmethod
    def from_proto(cls, msg: job_pb2.Report) -> Report:
        return cls(
            name=msg.name,
            columns=tuple(msg.columns),
            rows=tuple(tuple(r.cells) for r in msg.rows),
            text=msg.text,
        )


EventKind = Literal["state_change", "log", "metrics", "report"]
Payload = Union[StateChange, LogLine, Metrics, Report]  # noqa: UP007 (runtime alias, py3.10)

_PAYLOADS: dict[str, type] = {
    "state_change": StateChange,
    "log": LogLine,
    "metrics": Metrics,
    "report": Report,
}


@dataclass(frozen=True)
class Event:
    """One entry of a job's event log. `seq` runs 1, 2, 3... per job without gaps.

    `payload` is the typed body for `kind`; the `state_change`/`log`/`metrics`/`report`
    properties return it when the kind matches, else None.
    """

    job_id: str
    seq: int
    time: datetime | None
    attempt: int
    kind: EventKind
    payload: Payload

    @property
    def state_change(self) -> StateChange | None:
        return self.payload if self.kind == "state_change" else None  # type: ignore[return-value]

    @property
    def log(self) -> LogLine | None:
        return self.payload if self.kind == "log" else None  # type: ignore[return-value]

    @property
    def metrics(self) -> Metrics | None:
        return self.payload if self.kind == "metrics" else None  # type: ignore[return-value]

    @property
    def report(self) -> Report | None:
        return self.payload if self.kind == "report" else None  # type: ignore[return-value]

    def is_terminal(self) -> bool:
        """True for the state change that ends the job (the last event a follower needs)."""
        return self.kind == "state_change" and self.payload.state.is_terminal()  # type: ignore[union-attr]

    @classmethod
    def from_proto(cls, msg: job_pb2.Event) -> Event:
        kind = msg.WhichOneof("kind")
        if kind not in _PAYLOADS:
            # An event without a body (or one a newer coordinator added) reads as a log line
            # rather than breaking every follower.
            kind, payload = "log", LogLine(level="debug", message=f"<event of kind {kind}>")
        else:
            payload = _PAYLOADS[kind].from_proto(getattr(msg, kind))
        return cls(
            job_id=msg.job_id,
            seq=msg.seq,
            time=_opt_time(msg, "time"),
            attempt=msg.attempt,
            kind=kind,
            payload=payload,
        )


@dataclass(frozen=True)
class Worker:
    """A worker as the coordinator sees it; `state` is LIVE, LOST or DRAINING."""

    id: str
    hostname: str
    gpus: int
    free_gpus: int
    state: str
    job_ids: tuple[str, ...]
    last_heartbeat_age_s: float
    cpus: int = 0
    gpu_name: str = ""
    address: str = ""
    # Non-empty while the worker takes no jobs because of a problem of its own (e.g. its
    # artifacts disk is full); `ftctl workers` shows it as UNHEALTHY.
    unhealthy_reason: str = ""

    @classmethod
    def from_proto(cls, msg: coordinator_pb2.Worker) -> Worker:
        try:
            state = coordinator_pb2.WorkerState.Name(msg.state).replace("WORKER_STATE_", "")
        except ValueError:  # a state newer than this SDK
            state = str(msg.state)
        return cls(
            id=msg.id,
            hostname=msg.hostname,
            gpus=msg.resources.gpus,
            free_gpus=msg.free_gpus,
            state=state,
            job_ids=tuple(msg.job_ids),
            last_heartbeat_age_s=msg.last_heartbeat_age_s,
            cpus=msg.resources.cpus,
            gpu_name=msg.resources.gpu_name,
            address=msg.address,
            unhealthy_reason=msg.unhealthy_reason,
        )

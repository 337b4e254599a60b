"""Sweeps in the SDK: submit a job file with a `sweep:` block, follow its trials, pick the
best one.

    with Client() as client:
        sweep = client.submit_sweep("examples/sweep.yaml")
        final = sweep.wait()
        best = sweep.best()            # a Trial: its params, value and job id
        print(best.params, best.value, final.best_artifacts["model"])

The coordinator runs the search (coordinator/sweeps.py); every trial is an ordinary job, so
`client.get(trial.job_id)` and `client.events(trial.job_id)` work on it as on any job.
Errors are the SDK's own (tunefleet.client.errors).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from tunefleet.client.errors import DeadlineExceeded, TunefleetError, wire_limit, wire_str
from tunefleet.client.types import JobState, timestamp_to_datetime
from tunefleet.spec import sweep as space
from tunefleet.v1 import coordinator_pb2, job_pb2, spec_pb2, sweep_pb2

__all__ = ["Sweep", "SweepClient", "SweepHandle", "SweepState", "Trial"]


class SweepState(str, Enum):
    """A sweep's state; the values are the proto enum's names without `SWEEP_`."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value

    def is_terminal(self) -> bool:
        return self is not SweepState.RUNNING

    @classmethod
    def from_proto(cls, value: int) -> SweepState:
        try:
            return cls(sweep_pb2.SweepState.Name(value).removeprefix("SWEEP_"))
        except ValueError:
            raise ValueError(f"unknown sweep state {value}") from None


@dataclass(frozen=True)
class Trial:
    """One trial: the values drawn for it and how its job went."""

    number: int
    job_id: str
    # None while the trial has no job (its spec was refused).
    job_state: JobState | None
    # The sampler's view: RUNNING | COMPLETE | PRUNED | FAIL.
    trial_state: str
    # JobSpec field path -> the value drawn, as YAML writes it.
    params: dict[str, str]
    # The sweep's metric (best validation value) once the trial completed.
    value: float | None
    # Validation metric by step, as reported so far.
    intermediate: dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, msg: sweep_pb2.Trial) -> Trial:
        state = None if msg.job_state == job_pb2.JOB_STATE_UNSPECIFIED else msg.job_state
        return cls(
            number=msg.number,
            job_id=msg.job_id,
            job_state=JobState.from_proto(state) if state is not None else None,
            trial_state=msg.trial_state,
            params=dict(msg.params),
            value=msg.value if msg.HasField("value") else None,
            intermediate=dict(sorted(msg.intermediate.items())),
        )


@dataclass(frozen=True)
class Sweep:
    """A sweep as the coordinator last reported it."""

    id: str
    name: str
    state: SweepState
    reason: str
    trials: tuple[Trial, ...]
    best_trial: int | None
    best_job_id: str
    best_value: float | None
    # The best trial's artifacts (its model folder under "model").
    best_artifacts: dict[str, str]
    created_at: datetime | None
    finished_at: datetime | None
    submitter: str
    grid_size: int
    # The base job with its sweep block (defaults of the block filled in).
    spec: spec_pb2.JobSpec = field(repr=False)

    @property
    def metric(self) -> str:
        return self.spec.sweep.metric

    @property
    def mode(self) -> str:
        return self.spec.sweep.mode

    def is_terminal(self) -> bool:
        return self.state.is_terminal()

    def best(self) -> Trial | None:
        if self.best_trial is None:
            return None
        return next((t for t in self.trials if t.number == self.best_trial), None)

    @classmethod
    def from_proto(cls, msg: sweep_pb2.Sweep) -> Sweep:
        spec = spec_pb2.JobSpec()
        spec.CopyFrom(msg.spec)
        # A trial's params in the space's order (conditions after what they name), as the
        # coordinator stored them: the wire's map has no order of its own.
        rank = {path: i for i, path in enumerate(space.order(spec.sweep.space))}
        trials = []
        for t in msg.trials:
            trial = Trial.from_proto(t)
            ordered = sorted(
                trial.params.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])
            )
            trials.append(dataclasses.replace(trial, params=dict(ordered)))
        return cls(
            id=msg.id,
            name=msg.spec.name,
            state=SweepState.from_proto(msg.state),
            reason=msg.reason,
            trials=tuple(trials),
            best_trial=msg.best_trial if msg.HasField("best_trial") else None,
            best_job_id=msg.best_job_id,
            best_value=msg.best_value if msg.HasField("best_value") else None,
            best_artifacts=dict(msg.best_artifacts),
            created_at=timestamp_to_datetime(msg.created_at)
            if msg.HasField("created_at")
            else None,
            finished_at=(
                timestamp_to_datetime(msg.finished_at) if msg.HasField("finished_at") else None
            ),
            submitter=msg.submitter,
            grid_size=msg.grid_size,
            spec=spec,
        )


SWEEP_ID_PREFIX = "sweep-"


class SweepClient:
    """The sweep calls of `Client` (it inherits them): kept here so the job calls and the
    sweep calls each stay one module."""

    def submit_sweep(
        self,
        spec,
        *,
        idempotency_key: str | None = None,
        check_paths: bool = True,
        upload: bool | None = None,
        upload_progress=None,
    ) -> SweepHandle:
        """Validate a sweep (a job YAML path, dict or JobSpec with a `sweep:` block: every
        point of its space is checked as a job) locally, then submit it.

        Raises:
            ValidationError: Every problem, each with its field path (sweep.space.PATH for
                a swept field), exactly as the coordinator would report them.

        `check_paths`, `upload`, `upload_progress`: as Client.submit's. The local files the
        base job names and those its space's choices name (`data.train: [a.csv, b.csv]`)
        are uploaded, and the choices become their URLs; the handle's `notes` say what was
        sent and which paths are left as the workers'.
        """
        from tunefleet.client.client import _prepare_here
        from tunefleet.client.errors import ValidationError

        job_spec = self._resolve_source(_prepare_here(spec, check_paths))
        if not job_spec.HasField("sweep"):
            raise ValidationError(
                "not a sweep: the spec has no sweep block (submit it as a job instead)"
            )
        notes: list[str] = []
        if check_paths:  # local files go to the coordinator's storage, as for a job
            job_spec, notes = self._local_inputs(job_spec, upload, upload_progress)
        request = coordinator_pb2.SubmitSweepRequest(
            spec=job_spec, idempotency_key=idempotency_key or uuid.uuid4().hex
        )
        sweep = Sweep.from_proto(self._unary(self._stub.SubmitSweep, request))
        handle = SweepHandle(self, sweep.id, sweep=sweep)
        handle.notes = notes
        return handle

    def get_sweep(self, sweep_id: str) -> Sweep:
        """The sweep and its trials. `sweep_id` may be short, as a job id may (its digits
        or a unique prefix); raises NotFound, with "did you mean", for an unknown one."""
        return self._with_sweep_id(
            sweep_id,
            lambda sid: Sweep.from_proto(
                self._unary(self._stub.GetSweep, coordinator_pb2.GetSweepRequest(sweep_id=sid))
            ),
        )

    def list_sweeps(self, limit: int = 100) -> list[Sweep]:
        """Sweeps, newest first (their trials without intermediate values)."""
        request = coordinator_pb2.ListSweepsRequest(limit=wire_limit(limit))
        response = self._unary(self._stub.ListSweeps, request)
        return [Sweep.from_proto(s) for s in response.sweeps]

    def cancel_sweep(self, sweep_id: str, reason: str = "") -> Sweep:
        """No more trials; the queued and running ones are cancelled."""
        wire_str("reason", reason)

        def cancel(sid: str) -> Sweep:
            request = coordinator_pb2.CancelSweepRequest(sweep_id=sid, reason=reason)
            return Sweep.from_proto(self._unary(self._stub.CancelSweep, request))

        return self._with_sweep_id(sweep_id, cancel)

    def _with_sweep_id(self, sweep_id: str, call):
        """Client._with_id for sweeps: the listing is asked only for an unknown id."""
        return self._with_id(
            sweep_id, call, SWEEP_ID_PREFIX, lambda: [s.id for s in self.list_sweeps(limit=5000)]
        )

    def _sweep_named(self, given: str) -> str:
        """The one sweep whose id `given` names (a sweep id, its digits or a prefix of
        them) where a job id was wanted, else "": people copy a sweep's digits into a job
        verb, and "job ... not found" alone hid that the sweep exists."""
        wanted = given.strip().lower()
        if not wanted.startswith(SWEEP_ID_PREFIX):
            wanted = SWEEP_ID_PREFIX + wanted
        try:
            ids = [s.id for s in self.list_sweeps(limit=5000)]
        except TunefleetError:
            return ""
        matches = [i for i in ids if i.startswith(wanted)]
        return matches[0] if len(matches) == 1 else ""

    def sweep(self, sweep_id: str) -> SweepHandle:
        """A handle on an existing sweep (no call is made until you use it)."""
        return SweepHandle(self, sweep_id)


class SweepHandle:
    """A submitted sweep: its id plus calls that act on it; `sweep` is the last fetched."""

    def __init__(self, client: SweepClient, sweep_id: str, *, sweep: Sweep | None = None):
        self.id = sweep_id
        self.client = client
        self.sweep = sweep
        # What submit_sweep did with the local paths (uploaded, left as the workers').
        self.notes: list[str] = []

    def __repr__(self) -> str:
        return f"SweepHandle({self.id!r})"

    def get(self) -> Sweep:
        self.sweep = self.client.get_sweep(self.id)
        self.id = self.sweep.id  # a short id, resolved once
        return self.sweep

    def trials(self) -> list[Trial]:
        return list(self.get().trials)

    def best(self) -> Trial | None:
        """The best finished trial so far (by the sweep's metric and mode), or None."""
        return self.get().best()

    def wait(self, timeout: float | None = None, *, poll_s: float = 1.0) -> Sweep:
        """Block until every trial has ended; return the final Sweep. Raises
        DeadlineExceeded after `timeout` seconds (the sweep keeps running).

        A cancelled sweep is terminal at once, while its trials' jobs may still be
        stopping on their workers: this waits for those too, so that the caller may
        reuse the workers (or read the trials' last state) when it returns."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sweep = self.get()
            if sweep.is_terminal() and all(
                t.job_state is None or t.job_state.is_terminal() for t in sweep.trials
            ):
                return sweep
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"sweep {self.id}: still running after the timeout")
            time.sleep(
                poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic()))
            )

    def cancel(self, reason: str = "") -> Sweep:
        self.sweep = self.client.cancel_sweep(self.id, reason)
        return self.sweep

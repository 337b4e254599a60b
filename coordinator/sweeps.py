"""Sweeps: the coordinator drives an optuna study per sweep (ask a trial, run it as a job,
report its validation metrics, tell its result) and keeps the study's memory in its own
database (store/sweeps.py).

Why the study lives in memory only: a second store (optuna's RDB storage) could disagree
with the jobs table after a crash. Each study is rebuilt from the trial rows when first
needed (after a restart, or after a failed write), with `create_trial` + `add_trial`, so
the rows are the truth. Asking a trial and inserting its job and its row happen in one
transaction: a kill -9 leaves either all three or none, and the rebuilt study then asks
the next number again. A trial whose job ended while the coordinator was down is told on
start (`recover`).

Every trial is an ordinary job (its own id, events, artifacts, retries) created as the
sweep needs it: at most max_concurrent of a sweep's jobs are queued or running at once, and
max_trials in all. With placement's fair order (the user with the fewest jobs placed goes
first, placement.fair_order), a sweep's queued trials leave room for other users' jobs. A
trial the pruner stops goes through the normal cancel path and ends PRUNED, not FAILED.

TPE sweeps' trials are drawn in the sampler process (sampler_process.py, which the server
turns on): an ask is then a request, and its reply makes the trial and its job (one
transaction, as above) when it comes; the rows stay the truth.

Everything here runs with the Scheduler's lock held (the Scheduler, JobLifecycle and
ReportIngest call in with it, and the sampler process's replies take it), like
lifecycle.py.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Callable, Iterable

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from tunefleet import limits
from tunefleet import spec as specs
from tunefleet.coordinator import samplers, sweep_views
from tunefleet.coordinator.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    check_key_reuse,
    invalid_spec,
)
from tunefleet.coordinator.sampler_process import RemoteSampler, Reply
from tunefleet.coordinator.store import JobStore, SweepRow, TrialRow
from tunefleet.spec import sweep as space
from tunefleet.states import is_terminal
from tunefleet.v1 import job_pb2, spec_pb2, sweep_pb2

log = logging.getLogger("tunefleet.coordinator.scheduler")  # see lifecycle.py
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _may_be_trial(job: job_pb2.Job) -> bool:
    """False for a job that is surely no trial: every trial's job carries the label "sweep"
    (_new_trial sets it), so a job without it has no trial row to look up."""
    return "sweep" in job.spec.labels


def _trial_name(base: str, number: int) -> str:
    suffix = f"-t{number}"
    return base[: limits.MAX_NAME_CHARS - len(suffix)] + suffix


class Sweeps:
    """The sweeps' API (called by the Scheduler) and the jobs' hooks (called by
    JobLifecycle and ReportIngest); every method runs under the Scheduler's lock."""

    def __init__(
        self,
        store: JobStore,
        lock: threading.RLock,
        *,
        queue_job: Callable[[spec_pb2.JobSpec, str], job_pb2.Job],
        cancel_job: Callable[[str, str], object],
        clock: Callable[[], float],
        check_paths: bool,
        on_ended: Callable[[job_pb2.Job], None] = lambda source: None,
        sampler_process: bool = False,
    ):
        self.store = store
        # Called (lock held) with as_source(sweep) when a sweep ends: jobs chained on it
        # start, or fail with it.
        self._on_ended = on_ended
        self._lock = lock
        self._queue_job = queue_job
        self._cancel_job = cancel_job
        self._clock = clock
        self.check_paths = check_paths
        self._studies: dict[str, optuna.Study] = {}
        # TPE sweeps draw their trials in a child process (sampler_process.py): the server
        # turns it on; in-process callers (tests, benches) may.
        self._remote = RemoteSampler(self._on_replies, self._on_lost) if sampler_process else None
        self._local: set[str] = set()  # TPE sweeps the child failed: asked here

    def close(self) -> None:
        """Stops the sampler process, if one runs."""
        if self._remote is not None:
            self._remote.close()

    @property
    def sampler_pid(self) -> int | None:
        """The sampler process's pid while it runs (for tests and operators)."""
        return self._remote.pid if self._remote is not None else None

    # ---- API ---------------------------------------------------------------------------

    def submit(
        self, spec: spec_pb2.JobSpec, idempotency_key: str = "", *, submitter: str = ""
    ) -> sweep_pb2.Sweep:
        """Validates the sweep (every point of its space as a job) and queues its first
        trials."""
        if not spec.HasField("sweep"):
            raise invalid_spec([("sweep", "required: a sweep needs a sweep block (its space)")])
        try:  # outside the lock: the one validator may read files
            spec = specs.prepare(spec, check_paths=self.check_paths)
        except specs.SpecError as exc:
            raise invalid_spec([(e.path, e.message) for e in exc.errors]) from None
        with self._lock:
            if idempotency_key:
                existing = self.store.find_sweep_by_key(idempotency_key)
                if existing is not None:
                    check_key_reuse(existing.id, existing.spec, spec)
                    return self._view(existing)
            sweep_id = self._new_id()
            grid_size = len(space.grid(spec.sweep)) if spec.sweep.algorithm == "grid" else 0
            try:
                # The sweep and its first trials in one commit: a first ask that fails leaves
                # no sweep behind (RUNNING with no trial, asked again only by a restart).
                with self.store.atomic():
                    self.store.insert_sweep(
                        sweep_id,
                        spec,
                        submitter=submitter,
                        idempotency_key=idempotency_key,
                        grid_size=grid_size,
                        now=self._clock(),
                    )
                    self._advance(sweep_id)
            except Exception:
                self._studies.pop(sweep_id, None)
                self._forget(sweep_id)
                raise
            log.info("sweep %s submitted (%s, %d trials)", sweep_id, spec.sweep.algorithm,
                     spec.sweep.max_trials)  # fmt: skip
            return self.get(sweep_id)

    def get(self, sweep_id: str) -> sweep_pb2.Sweep:
        row = self.store.get_sweep(sweep_id)
        if row is None:
            raise NotFound(f"sweep {sweep_id} not found")
        return self._view(row)

    def find(self, sweep_id: str) -> SweepRow | None:
        return self.store.get_sweep(sweep_id)

    def as_source(self, sweep_id: str) -> job_pb2.Job | None:
        """A sweep as the model a chained job starts from (`model.job: sweep-...`): its best
        trial's job once the sweep SUCCEEDED; until then a stand-in job (the sweep's id and
        submitter) in the state the chained job waits on (RUNNING) or fails with (FAILED,
        CANCELLED). None: no such sweep."""
        row = self.store.get_sweep(sweep_id)
        if row is None:
            return None
        if row.state == sweep_pb2.SWEEP_SUCCEEDED:
            best = self._best(row)
            job = self.store.get_job(best.job_id) if best is not None else None
            if job is not None:
                return job
        state = {
            sweep_pb2.SWEEP_RUNNING: job_pb2.RUNNING,
            sweep_pb2.SWEEP_CANCELLED: job_pb2.CANCELLED,
        }.get(row.state, job_pb2.FAILED)
        return job_pb2.Job(id=sweep_id, state=state, submitter=row.submitter, reason=row.reason)

    def list(self, limit: int, *, submitter: str | None) -> list[sweep_pb2.Sweep]:
        views = [self._view(r) for r in self.store.list_sweeps(limit, submitter=submitter)]
        for view in views:
            for trial in view.trials:
                trial.ClearField("intermediate")
        return views

    def cancel(self, sweep_id: str, reason: str = "") -> sweep_pb2.Sweep:
        """No more trials; queued and running ones are cancelled (their jobs say why)."""
        reason = limits.clip_chars(reason, limits.MAX_REASON_CHARS) or "cancelled by user"
        with self._lock:
            row = self.store.get_sweep(sweep_id)
            if row is None:
                raise NotFound(f"sweep {sweep_id} not found")
            if row.state != sweep_pb2.SWEEP_RUNNING:
                state = sweep_pb2.SweepState.Name(row.state).removeprefix("SWEEP_")
                raise FailedPrecondition(f"sweep {sweep_id} already {state}")
            self.store.update_sweep(
                sweep_id, state=sweep_pb2.SWEEP_CANCELLED, reason=reason, finished_at=self._clock()
            )
            for t in self.store.trials(sweep_id):
                job = self.store.get_job(t.job_id)
                if job is not None and not is_terminal(job.state) and not job.cancel_requested:
                    self._cancel_job(t.job_id, f"sweep {sweep_id} cancelled: {reason}")
            self._forget(sweep_id)
            log.info("sweep %s cancelled: %s", sweep_id, reason)
            self._ended(sweep_id)
            return self.get(sweep_id)

    def recover(self) -> None:
        """After a restart: tell the trials whose jobs ended while we were down, and top
        the running sweeps up."""
        with self._lock:
            for sweep_id in self.store.running_sweeps():
                try:
                    row = self.store.get_sweep(sweep_id)
                    for t in self.store.trials(sweep_id):
                        job = self.store.get_job(t.job_id)
                        if t.state == "RUNNING" and job is not None and is_terminal(job.state):
                            self._tell(row, t, job)
                    self._advance(sweep_id, row)
                except Exception:
                    log.exception("sweep %s: recovery failed", sweep_id)

    # ---- hooks from the jobs' lifecycle (lock held) ------------------------------------

    def job_finishing(self, job: job_pb2.Job, state: int, reason: str) -> tuple[int, str]:
        """A trial its pruner stopped ends PRUNED, not CANCELLED."""
        if state != job_pb2.CANCELLED or not _may_be_trial(job):
            return state, reason
        trial = self.store.trial_of_job(job.id)
        if trial is not None and trial.state == "PRUNED":
            return job_pb2.PRUNED, trial.note or "pruned by the sweep"
        return state, reason

    def job_finished(self, job: job_pb2.Job) -> None:
        """Tells the sweep how its trial ended, then creates the next trials (or ends it)."""
        trial = self.store.trial_of_job(job.id) if _may_be_trial(job) else None
        if trial is None:
            return
        # Stored with the job's end (lifecycle.finish commits both at once), as savepoints:
        # a failed tell does not undo the job's end, nor a failed ask the tell.
        try:
            row = self.store.get_sweep(trial.sweep_id)  # read once: _tell keeps it current
            with self.store.atomic():
                if trial.state == "RUNNING":
                    self._tell(row, trial, job)
                try:
                    self._advance(trial.sweep_id, row)
                except Exception:  # the trials asked before it stand; the next end retries
                    self._studies.pop(trial.sweep_id, None)
                    log.exception("sweep %s: no next trial after trial %d", trial.sweep_id,
                                  trial.number)  # fmt: skip
        except Exception:  # the job's own end stands; recover() retries on restart
            self._studies.pop(trial.sweep_id, None)
            log.exception("sweep %s: trial %d's end not recorded", trial.sweep_id, trial.number)

    def forget_studies(self) -> None:
        """Drops the in-memory studies (a commit that held their tells and asks failed):
        each is rebuilt from its rows when next needed."""
        self._studies.clear()

    def events_stored(self, job_id: str, events: Iterable[job_pb2.Event]) -> None:
        """A trial's validation metrics feed its pruner; a prune stops it through the
        cancel path."""
        evals = [e.metrics for e in events if e.WhichOneof("kind") == "metrics"]
        evals = [m for m in evals if m.phase == "eval"]
        if not evals:
            return
        trial = self.store.trial_of_job(job_id)
        if trial is None or trial.state != "RUNNING":
            return
        try:
            self._report(trial, evals)
        except Exception:
            self._studies.pop(trial.sweep_id, None)
            log.exception("sweep %s: trial %d's metrics not recorded", trial.sweep_id, trial.number)

    # ---- the study ---------------------------------------------------------------------

    def _report(self, trial: TrialRow, evals: list[job_pb2.Metrics]) -> None:
        row = self.store.get_sweep(trial.sweep_id)
        if row is None:
            return
        metric = row.spec.sweep.metric
        for m in evals:
            value = m.values.get(metric)
            if value is None and metric == "loss" and m.HasField("loss"):
                value = m.loss
            if value is not None and math.isfinite(value):
                trial.intermediate[int(m.step)] = float(value)
        self.store.update_trial(trial.sweep_id, trial.number, intermediate=trial.intermediate)
        if row.state != sweep_pb2.SWEEP_RUNNING or row.spec.sweep.pruner == "none":
            return
        study = self._study(row)
        live = optuna.trial.Trial(study, self._trial_id(study, trial.number))
        for step, value in sorted(trial.intermediate.items()):
            if step not in study.get_trials(deepcopy=False)[trial.number].intermediate_values:
                live.report(value, step)
        pruned = live.should_prune()
        # ASHA records, per trial, its value at each rung it reached (system attrs): a study
        # rebuilt after a restart must compare later trials with those same values.
        attrs = study.get_trials(deepcopy=False)[trial.number].system_attrs
        if attrs != trial.system_attrs:
            trial.system_attrs = dict(attrs)
            self.store.update_trial(trial.sweep_id, trial.number, system_attrs=trial.system_attrs)
        if not pruned:
            return
        step = max(trial.intermediate)
        note = (
            f"pruned by the sweep's {row.spec.sweep.pruner} pruner at step {step} "
            f"({metric} {trial.intermediate[step]:.4g})"
        )
        self.store.update_trial(trial.sweep_id, trial.number, state="PRUNED", note=note)
        samplers.tell(study, trial.number, state=TrialState.PRUNED)
        log.info("sweep %s: trial %d (%s) %s", trial.sweep_id, trial.number, trial.job_id, note)
        self._cancel_job(trial.job_id, note)

    def _tell(self, row: SweepRow, trial: TrialRow, job: job_pb2.Job) -> None:
        """Stores and tells how a trial ended; a new best is set on `row` too, so a caller
        may go on with it (_advance) instead of reading it again."""
        sweep_id = row.id
        metric = row.spec.sweep.metric
        value = job.summary.get(f"eval_{metric}")
        if value is not None and not math.isfinite(value):
            value = None  # a diverged trial (NaN loss) is a failed one, not the best
        if job.state == job_pb2.SUCCEEDED and value is not None:
            state, note = "COMPLETE", ""
        else:
            value = None
            state = "FAIL"
            note = f"job {job.id} {job_pb2.JobState.Name(job.state)}: {job.reason}"
            if job.state == job_pb2.SUCCEEDED:
                note = f"job {job.id} reported no eval_{metric}"
        study = self._study(row)
        self.store.update_trial(sweep_id, trial.number, state=state, value=value, note=note)
        if state == "COMPLETE":
            samplers.tell(study, trial.number, value)
            if self._beats(row, trial.number, value):
                self.store.update_sweep(sweep_id, best_trial=trial.number, best_value=value)
                row.best_trial, row.best_value = trial.number, value
        else:
            samplers.tell(study, trial.number, state=TrialState.FAIL)

    def _advance(self, sweep_id: str, row: SweepRow | None = None) -> None:
        """Creates trials while the sweep may have more; ends it when all have ended. `row`:
        the sweep's row if the caller has it current."""
        row = self.store.get_sweep(sweep_id) if row is None else row
        if row is None or row.state != sweep_pb2.SWEEP_RUNNING:
            return
        s = row.spec.sweep
        # Counted, not read: every finished trial comes through here, and decoding all of a
        # sweep's trial rows each time made a 100-trial sweep's asks quadratic. Both counts
        # are queried once and kept while each new trial adds just its own queued job.
        asked = self.store.trial_count(sweep_id)
        active = self.store.active_trial_count(sweep_id)
        remote = self._remote_for(row)
        # Asks in flight to the sampler process: trials (and queued jobs) to be.
        pending = self._remote.pending(sweep_id) if remote else 0
        while asked + pending < s.max_trials:
            if active + pending >= s.max_concurrent:
                return
            # A remote ask's reply makes the trial (_on_replies), then comes back here.
            if remote and self._remote.request(sweep_id, s, self._study(row)):
                pending += 1
            elif self._new_trial(row):
                asked, active = asked + 1, active + 1
            else:  # anything else may have changed more: count again
                asked = self.store.trial_count(sweep_id)
                active = self.store.active_trial_count(sweep_id)
        if active or pending:
            return
        trials = self.store.trials(sweep_id)
        if any(t.state == "RUNNING" for t in trials):
            return
        best = self._best(row)
        counts = {k: sum(t.state == k for t in trials) for k in ("COMPLETE", "PRUNED", "FAIL")}
        summary = (
            f"{len(trials)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
            f"{counts['FAIL']} failed"
        )
        if best is None:
            state, reason = sweep_pb2.SWEEP_FAILED, f"{summary}; none reported {s.metric}"
        else:
            state = sweep_pb2.SWEEP_SUCCEEDED
            reason = (
                f"{summary}; best: trial {best.number} ({best.job_id}) {s.metric} {best.value:.4g}"
            )
        self.store.update_sweep(sweep_id, state=state, reason=reason, finished_at=self._clock())
        self._studies.pop(sweep_id, None)
        self._forget(sweep_id)
        log.info("sweep %s ended: %s", sweep_id, reason)
        self._ended(sweep_id)

    def _ended(self, sweep_id: str) -> None:
        source = self.as_source(sweep_id)
        if source is not None:
            self._on_ended(source)

    def _new_trial(self, row: SweepRow, given: Reply | None = None) -> bool:
        """Asks the study for a trial and queues its job, in one transaction. True: that
        added one trial and one queued job to the sweep and changed no other job (so the
        caller's counts stay right without a query). `given`: the trial the sampler
        process drew (its number and point), which the study records."""
        s = row.spec.sweep
        study = self._study(row)
        try:
            with self.store.atomic():
                if given is not None:  # drawn elsewhere: recorded as drawn
                    trial = self._record(study, given)
                    params = given.point
                elif s.algorithm == "grid":
                    trial = study.ask()
                    params = space.grid(s)[
                        trial.suggest_int(samplers.GRID_PARAM, 0, row.grid_size - 1)
                    ]
                else:
                    trial = study.ask()
                    params = samplers.suggest(trial, s)
                # Not study.trials: that deep-copies every trial of the study, on every ask.
                frozen = study.get_trials(deepcopy=False)[trial.number]
                record = TrialRow(
                    sweep_id=row.id,
                    number=trial.number,
                    job_id="",
                    state="RUNNING",
                    params={k: params[k] for k in space.order(s.space) if k in params},
                    sampler_params=dict(frozen.params),
                    distributions=dict(given.distributions)
                    if given is not None  # as the sampler process encoded them
                    else {k: distribution_to_json(d) for k, d in frozen.distributions.items()},
                    system_attrs=dict(frozen.system_attrs),
                )
                job_spec = space.apply(row.spec, params)
                job_spec.name = _trial_name(row.spec.name, trial.number)
                job_spec.labels["sweep"] = row.id
                job_spec.labels["trial"] = str(trial.number)
                job = None
                try:
                    job_spec = specs.prepare(job_spec, check_paths=False)
                    job = self._queue_job(job_spec, row.submitter)
                    record.job_id = job.id
                except (specs.SpecError, InvalidArgument) as exc:
                    record.state, record.note = "FAIL", f"its job was refused: {exc}"
                self.store.insert_trial(record)
                if record.state == "FAIL":
                    samplers.tell(study, trial.number, state=TrialState.FAIL)
        except Exception:
            self._studies.pop(row.id, None)  # it asked a trial the database does not have
            raise
        if given is not None:
            self._remote.delivered(row.id, record.number)
        log.info("sweep %s: trial %d -> %s %s", row.id, record.number, record.job_id or "-",
                 record.params)  # fmt: skip
        # _queue_job's job is current: it reads the row again if anything changed it.
        if job is not None and is_terminal(job.state):
            # It ended before its trial row existed (its source job had failed): tell it now.
            self._tell(row, record, job)
        # A chained job's queueing may end other jobs (its source's dependents).
        return job is not None and job.state == job_pb2.QUEUED and job.spec.model.source != "job"

    # ---- the sampler process (sampler_process.py) ------------------------------------

    @staticmethod
    def _record(study: optuna.Study, given: Reply) -> optuna.trial.FrozenTrial:
        """Adds the trial the sampler process drew to the coordinator's study, as RUNNING
        (no ask: that would run a sampler)."""
        trials = study.get_trials(deepcopy=False)
        if given.number != len(trials):
            raise LookupError(
                f"the sampler process drew trial {given.number}, the study is at {len(trials)}"
            )
        samplers.add_running(study, given.point, given.distributions)
        return study.get_trials(deepcopy=False)[given.number]

    def _remote_for(self, row: SweepRow) -> bool:
        """Whether the sweep's trials are drawn in the sampler process: TPE's (grid and
        random draw in microseconds), unless the process failed it or for good."""
        return (
            self._remote is not None
            and self._remote.usable
            and row.spec.sweep.algorithm not in ("grid", "random")
            and row.id not in self._local
        )

    def _forget(self, sweep_id: str) -> None:
        if self._remote is not None:
            self._remote.forget(sweep_id)
        self._local.discard(sweep_id)

    def _on_replies(self, replies: list[Reply]) -> None:
        """The sampler process's draws (from its reader thread): each becomes a trial and
        its job, all in one commit. A sweep whose reply made no trial asks again."""
        with self._lock:
            again: dict[str, None] = {}
            try:
                with self.store.atomic():
                    for reply in replies:
                        # A new trial takes its ask's place: the sweep's room is unchanged.
                        if self._remote.accept(reply) and not self._take(reply):
                            again[reply.sweep_id] = None
                    self._ask_again(list(again))
            except Exception:  # the commit: nothing of it stands, ask again
                log.exception("sampler process: trials not stored; asking again")
                self._studies.clear()
                self._ask_again(self._remote.reset_all())

    def _take(self, reply: Reply) -> bool:
        """The reply's trial and job; False if it made none (the sweep may ask again)."""
        row = self.store.get_sweep(reply.sweep_id)
        if row is None or row.state != sweep_pb2.SWEEP_RUNNING or not self._remote_for(row):
            return False
        if reply.point is None:
            log.warning("sweep %s: the sampler process could not ask: %s", row.id, reply.error)
            if self._remote.failed(row.id):
                log.error("sweep %s: asked in the coordinator from now on", row.id)
                self._local.add(row.id)
                self._studies.pop(row.id, None)  # rebuilt with its own TPE sampler
            return False
        try:
            # A trial and a queued job, and nothing else changed: its room is the same.
            return self._new_trial(row, given=reply)
        except Exception:
            log.exception("sweep %s: trial %d not recorded", row.id, reply.number)
            self._remote.reset(row.id)  # its mirror has a trial the rows lack
            return False

    def _on_lost(self) -> None:
        """The sampler process died (reader thread): every mirror went with it."""
        with self._lock:
            self._ask_again(self._remote.reset_all())

    def _ask_again(self, sweep_ids: list[str]) -> None:
        """_advance for each sweep, each on its own (a failure stops only its sweep)."""
        for sweep_id in sweep_ids:
            try:
                with self.store.atomic():
                    self._advance(sweep_id)
            except Exception:
                self._studies.pop(sweep_id, None)
                log.exception("sweep %s: no next trial", sweep_id)

    def _study(self, row: SweepRow) -> optuna.Study:
        study = self._studies.get(row.id)
        # Kept while its sampler still fits: a sweep the sampler process gave up on (or
        # that lost it for good) is rebuilt with its own TPE sampler.
        remote = self._remote_for(row)
        if study is not None and isinstance(study.sampler, samplers.Elsewhere) == remote:
            return study
        s = row.spec.sweep
        trials = self.store.trials(row.id)
        study = samplers.new_study(
            s,
            samplers.Elsewhere() if remote else samplers.sampler(s, row.grid_size, len(trials)),
            samplers.pruner(s),
            row.id,
        )
        for t in trials:
            samplers.add_trial(
                study,
                TrialState[t.state],
                t.value,
                t.sampler_params,
                t.distributions,
                t.intermediate,
                t.system_attrs,
            )
        self._studies[row.id] = study
        return study

    @staticmethod
    def _trial_id(study: optuna.Study, number: int) -> int:
        return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)

    @staticmethod
    def _beats(row: SweepRow, number: int, value: float) -> bool:
        """Whether a trial that just completed is the sweep's new best: as _best picks
        (the better value; of equal ones, the lower trial number), without reading every
        trial."""
        if row.best_value is None or row.best_trial is None:
            return True
        if value == row.best_value:
            return number < row.best_trial
        return value < row.best_value if row.spec.sweep.mode == "min" else value > row.best_value

    def _best(self, row: SweepRow) -> TrialRow | None:
        return sweep_views.best(self.store, row)

    def _view(self, row: SweepRow) -> sweep_pb2.Sweep:
        return sweep_views.view(self.store, row)

    def _new_id(self) -> str:
        while True:
            sweep_id = f"sweep-{secrets.token_hex(4)}"
            if self.store.get_sweep(sweep_id) is None:
                return sweep_id

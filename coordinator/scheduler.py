"""Scheduler: every job state transition, job placement, and worker liveness.

All changes to jobs and workers go through here under one lock, so a check ("is this
attempt still the job's current one?") and the write that depends on it are atomic. The
lock is never held while waiting: long-polling workers wait on a Condition that submits
and finished jobs notify.

Placement model (deliberately simple for now):
- A job needs `resources.gpus` GPUs of one worker. A GPU worker takes jobs while its free
  GPUs cover them.
- A CPU-only job (gpus == 0) uses the worker's CPUs flat out, so each worker runs at most
  one CPU-only job at a time.
- Queued jobs are offered in order (priority desc, then oldest first); a worker takes the
  first one that fits it. A job too big for every worker therefore waits without blocking
  smaller jobs behind it (it could starve under a steady stream of small jobs; reserving
  capacity for it is a later concern).
- A job whose model comes from another job (`model.source: job`) waits until that job
  SUCCEEDED and takes its `artifacts["model"]` as `model.name` when it is assigned.

Failures (each requeue or retry appends a log event with the cause and a state change):
- A worker holds its jobs under a lease that its heartbeats renew. A worker silent for
  longer than lease_timeout_s is LOST and its jobs go back to QUEUED ("worker lost"); so do
  the jobs of a worker that registers again (it restarted) and a job the worker released
  (it is draining, or the training process was preempted). None of these count against
  train.max_restarts: the job did nothing wrong.
- A training process that crashed (FinishJob FAILED with retryable) is queued again after
  a backoff of retry_backoff_s * 2^(n-1) s (capped), up to train.max_restarts times; then
  it FAILED. Deterministic failures (bad input, exit code 2) are FAILED at once.
- The attempt number is the fencing token. Every placement starts the next attempt, and
  reports, finishes and releases of any other attempt are refused (FAILED_PRECONDITION):
  a worker that was cut off and comes back cannot overwrite the new attempt's work, and at
  most one attempt of a job is ever ASSIGNED or RUNNING (the job row has one worker).
- The next attempt resumes from the newest complete checkpoint because every attempt
  writes to the same output folder (output.dir, else the worker's artifacts_root/JOB_ID,
  which must be storage shared by all workers).
"""

from __future__ import annotations

import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable

from tunefleet import spec as specs
from tunefleet.coordinator.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    invalid_spec,
)
from tunefleet.coordinator.event_bus import EventBus
from tunefleet.coordinator.store import JobStore, WorkerRecord
from tunefleet.states import TERMINAL_STATES, is_terminal, state_name
from tunefleet.v1 import coordinator_pb2, job_pb2, spec_pb2

log = logging.getLogger(__name__)

# Fleets up to this size (workers + active + queued jobs) are explained on every change;
# larger ones by the lease watch.
_EXPLAIN_AT_ONCE = 256

# An AcquireJob long poll never holds a server thread longer than this.
MAX_ACQUIRE_WAIT_S = 60.0

_DEFAULT_FINISH_REASONS = {
    job_pb2.SUCCEEDED: "finished on worker {worker}",
    job_pb2.FAILED: "failed on worker {worker}",
    job_pb2.CANCELLED: "cancelled by user",
}


def _seconds(timestamp) -> float:
    return timestamp.ToNanoseconds() / 1e9


def _gpus(job: job_pb2.Job) -> int:
    return job.spec.resources.gpus


def _need(spec: bytes) -> tuple[int, str]:
    """(GPUs, source job id) of a serialized spec: what explaining a wait looks at."""
    parsed = spec_pb2.JobSpec.FromString(spec)
    return parsed.resources.gpus, parsed.model.job if parsed.model.source == "job" else ""


class _Capacity:
    """What a worker has left, given the jobs it runs now."""

    def __init__(self, worker: WorkerRecord, active: Iterable[job_pb2.Job]):
        mine = [j for j in active if j.worker_id == worker.id]
        self.job_ids = [j.id for j in mine]
        self.free_gpus = worker.resources.gpus - sum(_gpus(j) for j in mine)
        self.cpu_busy = any(_gpus(j) == 0 for j in mine)

    def fits(self, job: job_pb2.Job) -> bool:
        need = _gpus(job)
        return self.free_gpus >= need if need > 0 else not self.cpu_busy


def _prepare_spec(spec: spec_pb2.JobSpec, check_paths: bool) -> spec_pb2.JobSpec:
    """Validates and resolves a submitted spec with tunefleet.spec, the one validator."""
    try:
        return specs.prepare(spec, check_paths=check_paths)
    except specs.SpecError as exc:
        raise invalid_spec([(e.path, e.message) for e in exc.errors]) from None


class Scheduler:
    def __init__(
        self,
        store: JobStore,
        bus: EventBus,
        *,
        heartbeat_interval_s: float = 2.0,
        lease_timeout_s: float = 10.0,
        check_paths: bool = True,
        retry_backoff_s: float = 1.0,
        retry_backoff_max_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.bus = bus
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lease_timeout_s = lease_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.check_paths = check_paths
        self._clock = clock
        self._lock = threading.RLock()
        self._work_available = threading.Condition(self._lock)
        self._closing = threading.Event()
        # Explaining waits reads every worker, active and queued job; a large fleet is
        # explained by the lease watch (see _explain_waiting).
        self._explain_pending = False
        self._explain_size = 0
        self._needs: dict[str, tuple[int, str]] = {}  # queued job id -> _need(spec)
        # After a coordinator restart every LIVE worker gets a fresh lease: the workers kept
        # running while we were down and deserve lease_timeout_s to reach us again before
        # their jobs are written off.
        store.renew_leases(coordinator_pb2.LIVE, self._clock())
        self._lease_watch = threading.Thread(
            target=self._watch_leases, name="tunefleet-lease-watch", daemon=True
        )

    def start(self) -> None:
        self._lease_watch.start()

    def close(self) -> None:
        """Stops the lease watch and sends long-polling workers away (UNAVAILABLE)."""
        self._closing.set()
        with self._work_available:
            self._work_available.notify_all()
        if self._lease_watch.is_alive():
            self._lease_watch.join(timeout=5)

    # ---- client API ------------------------------------------------------------------

    def submit(
        self, spec: spec_pb2.JobSpec, idempotency_key: str = "", *, submitter: str = ""
    ) -> job_pb2.Job:
        """Validates and queues a job; a retried submit (same key) returns the first job.
        `submitter` is the authenticated caller's name ("" without authentication)."""
        spec = _prepare_spec(spec, self.check_paths)  # outside the lock: it may read files
        with self._lock:
            if idempotency_key:
                existing = self.store.find_by_idempotency_key(idempotency_key)
                if existing is not None:
                    return existing
            source = self._source_job(spec)
            job_id = self._new_job_id()
            job, event = self.store.insert_job(
                job_id,
                spec,
                reason="submitted",
                idempotency_key=idempotency_key,
                source_job=source.id if source else "",
                submitter=submitter,
                now=self._clock(),
            )
            self.bus.publish(job_id, event.seq)
            log.info("job %s submitted (priority %d, gpus %d)", job_id, spec.priority, _gpus(job))
            if source is not None:
                self._fail_dependents_of(source)
            self._explain_waiting()
            self._work_available.notify_all()
            return self.get_job(job_id)

    def get_job(self, job_id: str) -> job_pb2.Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    def cancel(self, job_id: str, reason: str = "") -> job_pb2.Job:
        """QUEUED jobs end at once; running ones are flagged and their worker stops them."""
        reason = reason or "cancelled by user"
        with self._lock:
            job = self.get_job(job_id)
            if is_terminal(job.state):
                raise FailedPrecondition(f"job {job_id} already {state_name(job.state)}")
            if job.state == job_pb2.QUEUED:
                self._finish(job, job_pb2.CANCELLED, reason)
            elif not job.cancel_requested:
                now = self._clock()
                self.store.update_job(job_id, cancel_requested=True, now=now)
                note = job_pb2.Event(
                    log=job_pb2.LogLine(level="info", message=f"cancellation requested: {reason}")
                )
                (event,) = self.store.append_events(job_id, job.attempt, [note], now=now)
                self.bus.publish(job_id, event.seq)
            return self.get_job(job_id)

    def list_workers(self) -> list[coordinator_pb2.Worker]:
        now = self._clock()
        active: dict[str, list[job_pb2.Job]] = {}
        for job in self.store.active_jobs():
            active.setdefault(job.worker_id, []).append(job)
        workers = []
        for record in self.store.list_workers():
            capacity = _Capacity(record, active.get(record.id, ()))
            workers.append(
                coordinator_pb2.Worker(
                    id=record.id,
                    hostname=record.hostname,
                    resources=record.resources,
                    state=record.state,
                    free_gpus=max(capacity.free_gpus, 0),
                    job_ids=capacity.job_ids,
                    last_heartbeat_age_s=max(now - record.last_heartbeat, 0.0),
                    address=record.address,
                )
            )
        return workers

    # ---- worker API ------------------------------------------------------------------

    def register_worker(
        self,
        worker_id: str,
        *,
        hostname: str = "",
        resources: coordinator_pb2.WorkerResources | None = None,
        address: str = "",
    ) -> str:
        resources = resources or coordinator_pb2.WorkerResources()
        with self._lock:
            worker_id = worker_id or self._new_worker_id(hostname)
            if self.store.get_worker(worker_id) is not None:
                # The worker process restarted: whatever it ran before is gone with it.
                for job in self.store.active_jobs(worker_id):
                    self._release(job, f"worker {worker_id} restarted")
            self.store.upsert_worker(
                WorkerRecord(
                    id=worker_id,
                    hostname=hostname,
                    resources=resources,
                    state=coordinator_pb2.LIVE,
                    last_heartbeat=self._clock(),
                    address=address,
                )
            )
            log.info("worker %s registered (%s, %d GPUs)", worker_id, hostname, resources.gpus)
            self._explain_waiting()
            self._work_available.notify_all()
            return worker_id

    def heartbeat(
        self, worker_id: str, running_job_ids: Iterable[str]
    ) -> tuple[list[str], list[str], bool]:
        """Renews the worker's lease; returns (job ids it must stop, the part of those that
        are no longer its own, whether it is known)."""
        running = set(running_job_ids)
        with self._lock:
            worker = self.store.get_worker(worker_id)
            if worker is None or worker.state == coordinator_pb2.LOST:
                return sorted(running), sorted(running), False
            now = self._clock()
            self.store.touch_worker(worker_id, now)
            mine = {job.id: job for job in self.store.active_jobs(worker_id)}
            lost = {job_id for job_id in running if job_id not in mine}
            stop = lost | {job.id for job in mine.values() if job.cancel_requested}
            for job in mine.values():
                # An assignment whose AcquireJob response never reached the worker, or a
                # job the worker dropped without a word (it lists a job until it has told
                # us how the job ended). Quiet for a lease: a fresh assignment or a late
                # report is not mistaken for one.
                quiet_for = now - _seconds(job.updated_at)
                if job.id in running or quiet_for <= self.lease_timeout_s:
                    continue
                if job.state == job_pb2.ASSIGNED:
                    self._release(job, f"worker {worker_id} never started the job")
                else:
                    self._release(job, f"worker {worker_id} no longer runs the job")
            return sorted(stop), sorted(lost), True

    def acquire(
        self, worker_id: str, wait_s: float, is_active: Callable[[], bool] = lambda: True
    ) -> job_pb2.Job | None:
        """Long poll: assigns the best queued job this worker can run, waiting up to wait_s."""
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_ACQUIRE_WAIT_S)
        with self._work_available:
            while True:
                if self._closing.is_set():
                    raise Unavailable("the coordinator is shutting down")
                worker = self.store.get_worker(worker_id)
                if worker is None or worker.state != coordinator_pb2.LIVE:
                    raise FailedPrecondition(
                        f"worker {worker_id} is not registered (or was lost); register again"
                    )
                job = self._place(worker)
                remaining = deadline - time.monotonic()
                if job is not None or remaining <= 0 or not is_active():
                    return job
                # Wakes early on submit/finish; the 1 s cap notices a vanished caller, and a
                # retry whose backoff ends sooner is placed when it ends.
                self._work_available.wait(min(remaining, 1.0, self._next_backoff_end()))

    def report(
        self,
        worker_id: str,
        job_id: str,
        attempt: int,
        events: Iterable[job_pb2.Event],
        batch_seq: int = 0,
    ) -> int:
        """Stores a worker's events for its current attempt; returns the job's last seq.

        A batch_seq already stored for this attempt is a retry and stores nothing; metrics
        of steps already reported (by an earlier attempt) are dropped (see
        JobStore.append_report)."""
        events = list(events)
        for i, event in enumerate(events):
            kind = event.WhichOneof("kind")
            if kind is None:
                raise InvalidArgument(f"events[{i}] has no kind (log, metrics or report)")
            if kind == "state_change":
                raise InvalidArgument(
                    f"events[{i}]: state changes are made by the coordinator; "
                    "end a job with FinishJob"
                )
        with self._lock:
            job = self._owned_job(worker_id, job_id, attempt)
            now = self._clock()
            if job.state == job_pb2.ASSIGNED:
                job, event = self.store.transition(
                    job_id,
                    job_pb2.RUNNING,
                    f"training started on worker {worker_id}",
                    started_at=now,
                    now=now,
                )
                self.bus.publish(job_id, event.seq)
            stored, duplicate = self.store.append_report(
                job_id, attempt, batch_seq, events, now=now
            )
            if duplicate:
                log.info(
                    "job %s: batch %d of attempt %d was stored before", job_id, batch_seq, attempt
                )
            last_seq = stored[-1].seq if stored else job.last_seq
            self.bus.publish(job_id, last_seq, stored)
            return last_seq

    def finish(
        self,
        worker_id: str,
        job_id: str,
        attempt: int,
        state: int,
        reason: str = "",
        artifacts: dict[str, str] | None = None,
        summary: dict[str, float] | None = None,
        retryable: bool = False,
    ) -> None:
        """Ends the worker's attempt. FAILED with `retryable` (the training process crashed)
        queues the job again while train.max_restarts allows, after a backoff."""
        if state not in TERMINAL_STATES:
            raise InvalidArgument(
                f"state must be SUCCEEDED, FAILED or CANCELLED, not {state_name(state)}"
            )
        with self._lock:
            job = self.get_job(job_id)
            if job.state == state and job.worker_id == worker_id and job.attempt == attempt:
                return  # a retried FinishJob whose first reply was lost
            job = self._owned_job(worker_id, job_id, attempt)
            reason = reason or _DEFAULT_FINISH_REASONS[state].format(worker=worker_id)
            if state == job_pb2.FAILED and retryable and not job.cancel_requested:
                self._retry(job, reason)
                return
            self._finish(job, state, reason, artifacts=artifacts or {}, summary=summary or {})

    def release(self, worker_id: str, job_id: str, attempt: int, reason: str = "") -> None:
        """The worker gives its attempt back unfinished (draining, preempted): requeue."""
        with self._lock:
            job = self._owned_job(worker_id, job_id, attempt)
            self._release(job, reason or f"released by worker {worker_id}")

    # ---- liveness --------------------------------------------------------------------

    def expire_leases(self) -> list[str]:
        """Marks workers silent for longer than the lease as LOST; returns their ids."""
        lost = []
        with self._lock:
            now = self._clock()
            for worker in self.store.list_workers():
                silent_for = now - worker.last_heartbeat
                if worker.state != coordinator_pb2.LIVE or silent_for <= self.lease_timeout_s:
                    continue
                log.warning("worker %s lost (no heartbeat for %.1f s)", worker.id, silent_for)
                self.store.set_worker_state(worker.id, coordinator_pb2.LOST)
                for job in self.store.active_jobs(worker.id):
                    self._release(
                        job,
                        "worker lost",
                        detail=f"worker {worker.id} sent no heartbeat for {silent_for:.1f} s "
                        f"(lease {self.lease_timeout_s:g} s)",
                    )
                lost.append(worker.id)
            if lost:
                self._explain_waiting()
        return lost

    def _watch_leases(self) -> None:
        period = min(max(self.lease_timeout_s / 4, 0.05), 1.0)
        last_pass = time.monotonic()
        while not self._closing.wait(period):
            try:
                stalled_for = time.monotonic() - last_pass
                last_pass = time.monotonic()
                if stalled_for > period + self.lease_timeout_s / 2:
                    # We were stopped or starved (SIGSTOP, swapping, a long GC): the silence
                    # was ours, not the workers'. Give them a full lease to reach us, as
                    # after a restart, rather than requeue every running job.
                    log.warning("lease watch stalled for %.1f s; renewing leases", stalled_for)
                    self.store.renew_leases(coordinator_pb2.LIVE, self._clock())
                    continue
                self.expire_leases()
                if self._explain_pending:
                    self._explain_pass()  # outside the lock: see _explain_waiting
            except Exception:  # keep watching: one bad pass must not stop liveness
                log.exception("lease check failed")

    # ---- internals (call with the lock held) -------------------------------------------

    def _owned_job(self, worker_id: str, job_id: str, attempt: int) -> job_pb2.Job:
        """The job, if `attempt` on `worker_id` is its current, unfinished placement."""
        job = self.get_job(job_id)
        if (
            job.worker_id != worker_id
            or job.attempt != attempt
            or job.state
            not in (
                job_pb2.ASSIGNED,
                job_pb2.RUNNING,
            )
        ):
            raise FailedPrecondition(
                f"job {job_id} attempt {attempt} does not belong to worker {worker_id} "
                f"(job is {state_name(job.state)}, attempt {job.attempt}"
                f"{', on worker ' + job.worker_id if job.worker_id else ''})"
            )
        return job

    def _place(self, worker: WorkerRecord) -> job_pb2.Job | None:
        capacity = _Capacity(worker, self.store.active_jobs(worker.id))
        now = self._clock()
        for job in self.store.iter_queued():
            if not capacity.fits(job) or _seconds(job.not_before) > now:
                continue
            spec = None
            if job.spec.model.source == "job":
                source = self.store.get_job(job.spec.model.job)
                if source is None or source.state != job_pb2.SUCCEEDED:
                    continue
                model = source.artifacts.get("model")
                if not model:
                    self._finish(job, job_pb2.FAILED, f"source job {source.id} has no model")
                    continue
                spec = spec_pb2.JobSpec()
                spec.CopyFrom(job.spec)
                spec.model.name = model
            fields = {"attempt": job.attempt + 1, "worker_id": worker.id, "report_batch": 0}
            if spec is not None:
                fields["spec"] = spec
            job, event = self.store.transition(
                job.id,
                job_pb2.ASSIGNED,
                f"assigned to worker {worker.id}",
                now=self._clock(),
                **fields,
            )
            self.bus.publish(job.id, event.seq)
            log.info("job %s assigned to worker %s (attempt %d)", job.id, worker.id, job.attempt)
            self._explain_waiting()
            return job
        return None

    def _finish(self, job: job_pb2.Job, state: int, reason: str, **fields) -> None:
        now = self._clock()
        job, event = self.store.transition(
            job.id, state, reason, finished_at=now, now=now, **fields
        )
        self.bus.publish(job.id, event.seq)
        log.info("job %s %s: %s", job.id, state_name(state), reason)
        self._fail_dependents_of(job)
        self._explain_waiting()
        self._work_available.notify_all()

    def _release(self, job: job_pb2.Job, reason: str, *, detail: str = "") -> None:
        """Queues again a job whose worker went away or gave it back; not a restart."""
        if job.cancel_requested:
            self._finish(job, job_pb2.CANCELLED, f"cancelled by user ({reason} before it stopped)")
            return
        self._requeue(
            job,
            reason,
            f"attempt {job.attempt} on worker {job.worker_id} ended: {detail or reason}; "
            "queued again (not counted against train.max_restarts), the next attempt resumes "
            "from the newest checkpoint",
        )

    def _retry(self, job: job_pb2.Job, reason: str) -> None:
        """A crashed training process: queue again after a backoff, or give up."""
        limit = job.spec.train.max_restarts
        if job.restarts >= limit:
            self._finish(
                job, job_pb2.FAILED, f"{reason} (no restarts left: train.max_restarts is {limit})"
            )
            return
        restarts = job.restarts + 1
        delay = min(self.retry_backoff_s * 2 ** (restarts - 1), self.retry_backoff_max_s)
        self._requeue(
            job,
            f"restart {restarts} of {limit} in {delay:g} s: {reason}",
            f"attempt {job.attempt} on worker {job.worker_id} crashed: {reason}; restart "
            f"{restarts} of {limit} (train.max_restarts) in {delay:g} s, from the newest "
            "checkpoint",
            restarts=restarts,
            not_before=self._clock() + delay,
        )

    def _requeue(self, job: job_pb2.Job, reason: str, note: str, **fields) -> None:
        # The attempt stays; the next placement bumps it, which fences the old one: its
        # late reports no longer match (and are refused while the job is QUEUED anyway).
        job, event = self.store.transition(
            job.id,
            job_pb2.QUEUED,
            reason,
            now=self._clock(),
            notes=[job_pb2.Event(log=job_pb2.LogLine(level="warning", message=note))],
            worker_id="",
            **fields,
        )
        self.bus.publish(job.id, event.seq)
        log.warning("job %s: %s", job.id, note)
        self._explain_waiting()
        self._work_available.notify_all()

    def _next_backoff_end(self) -> float:
        """Seconds until the earliest retry backoff of a queued job ends (inf: none)."""
        now = self._clock()
        end = self.store.next_not_before(now)
        return end - now if end is not None else float("inf")

    def _fail_dependents_of(self, source: job_pb2.Job) -> None:
        if source.state not in (job_pb2.FAILED, job_pb2.CANCELLED):
            return
        for job in self.store.dependents(source.id):
            # _finish recurses into the dependents of `job` in turn.
            self._finish(
                job, job_pb2.FAILED, f"source job {source.id} ended {state_name(source.state)}"
            )

    def _source_job(self, spec: spec_pb2.JobSpec) -> job_pb2.Job | None:
        if spec.model.source != "job":
            return None
        if not spec.model.job:
            raise invalid_spec([("model.job", "required when model.source is job")])
        source = self.store.get_job(spec.model.job)
        if source is None:
            raise invalid_spec([("model.job", f"job {spec.model.job} not found")])
        return source

    def _explain_waiting(self) -> None:
        """Keeps each queued job's reason saying what it waits for.

        A pass reads every worker, active job and queued job. Up to _EXPLAIN_AT_ONCE of them
        it runs at once, under the lock. A larger fleet is explained by the lease watch, at
        most once per period and outside the lock: placements must not wait for scans of
        thousands of rows, and a reason is advice that may lag a second.
        """
        if self._explain_size > _EXPLAIN_AT_ONCE:
            self._explain_pending = True
            return
        self._explain_pass()

    def _explain_pass(self) -> None:
        self._explain_pending = False
        live = [w for w in self.store.list_workers() if w.state == coordinator_pb2.LIVE]
        active: dict[str, list[job_pb2.Job]] = {}
        for job in self.store.active_jobs():
            active.setdefault(job.worker_id, []).append(job)
        self._explain_size = len(live) + sum(map(len, active.values()))
        capacities = [_Capacity(w, active.get(w.id, ())) for w in live]
        most_free_gpus = max((c.free_gpus for c in capacities), default=0)
        cpu_slot_free = any(not c.cpu_busy for c in capacities)
        now = self._clock()
        queued = self.store.queued_brief()
        self._explain_size += len(queued)
        reasons: dict[str, str] = {}
        needs: dict[str, tuple[int, str]] = {}
        for job_id, current, spec, not_before in queued:
            need, source = needs[job_id] = self._needs.get(job_id) or _need(spec)
            if not_before > now:
                continue  # its reason says when its restart is due
            source_job = self.store.get_job(source) if source else None
            if source_job is not None and source_job.state != job_pb2.SUCCEEDED:
                reason = (
                    f"waiting for source job {source} to succeed "
                    f"(it is {state_name(source_job.state)})"
                )
            elif need > 0 and need > most_free_gpus:
                reason = f"waiting for a worker with {need} free GPUs"
            elif need == 0 and not cpu_slot_free:
                reason = "waiting for a free worker"
            else:
                continue
            if reason != current:
                reasons[job_id] = reason
        self._needs = needs
        if reasons:
            self.store.set_reasons(reasons, now=self._clock())

    def _new_job_id(self) -> str:
        while True:
            job_id = f"job-{secrets.token_hex(4)}"
            if self.store.get_job(job_id) is None:
                return job_id

    def _new_worker_id(self, hostname: str) -> str:
        base = re.sub(r"[^A-Za-z0-9-]+", "-", hostname or socket.gethostname()).strip("-")
        while True:
            worker_id = f"{base or 'worker'}-{secrets.token_hex(2)}"
            if self.store.get_worker(worker_id) is None:
                return worker_id

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
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.bus = bus
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lease_timeout_s = lease_timeout_s
        self.check_paths = check_paths
        self._clock = clock
        self._lock = threading.RLock()
        self._work_available = threading.Condition(self._lock)
        self._closing = threading.Event()
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

    def submit(self, spec: spec_pb2.JobSpec, idempotency_key: str = "") -> job_pb2.Job:
        """Validates and queues a job; a retried submit (same key) returns the first job."""
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
        active = self.store.active_jobs()
        workers = []
        for record in self.store.list_workers():
            capacity = _Capacity(record, active)
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

    def heartbeat(self, worker_id: str, running_job_ids: Iterable[str]) -> tuple[list[str], bool]:
        """Renews the worker's lease; returns (job ids it must stop, whether it is known)."""
        running = set(running_job_ids)
        with self._lock:
            worker = self.store.get_worker(worker_id)
            if worker is None or worker.state == coordinator_pb2.LOST:
                return sorted(running), False
            now = self._clock()
            self.store.touch_worker(worker_id, now)
            mine = {job.id: job for job in self.store.active_jobs(worker_id)}
            stop = {job_id for job_id in running if job_id not in mine}
            stop.update(job.id for job in mine.values() if job.cancel_requested)
            for job in mine.values():
                # An assignment whose AcquireJob response never reached the worker.
                unstarted_for = now - _seconds(job.updated_at)
                if (
                    job.state == job_pb2.ASSIGNED
                    and job.id not in running
                    and unstarted_for > self.lease_timeout_s
                ):
                    self._release(job, f"worker {worker_id} never started the job")
            return sorted(stop), True

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
                # Wakes early on submit/finish; the 1 s cap notices a vanished caller.
                self._work_available.wait(min(remaining, 1.0))

    def report(
        self, worker_id: str, job_id: str, attempt: int, events: Iterable[job_pb2.Event]
    ) -> int:
        """Stores a worker's events for its current attempt; returns the job's last seq."""
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
            stored = self.store.append_events(job_id, attempt, events, now=now)
            last_seq = stored[-1].seq if stored else job.last_seq
            self.bus.publish(job_id, last_seq)
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
    ) -> None:
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
            self._finish(job, state, reason, artifacts=artifacts or {}, summary=summary or {})

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
                    self._release(job, "worker lost")
                lost.append(worker.id)
            if lost:
                self._explain_waiting()
        return lost

    def _watch_leases(self) -> None:
        period = min(max(self.lease_timeout_s / 4, 0.05), 1.0)
        while not self._closing.wait(period):
            try:
                self.expire_leases()
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
        capacity = _Capacity(worker, self.store.active_jobs())
        for job in self.store.queued_jobs():
            if not capacity.fits(job):
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
            fields = {"attempt": job.attempt + 1, "worker_id": worker.id}
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

    def _release(self, job: job_pb2.Job, reason: str) -> None:
        """Ends a job whose worker went away."""
        if job.cancel_requested:
            self._finish(job, job_pb2.CANCELLED, f"cancelled by user ({reason} before it stopped)")
            return
        # Requeueing is a later issue. It would be:
        #   self.store.transition(job.id, job_pb2.QUEUED, reason, worker_id="")
        # the next placement bumps the attempt, so the old worker's late reports are stale.
        self._finish(job, job_pb2.FAILED, reason)

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
        """Keeps each queued job's reason saying what it waits for."""
        live = [w for w in self.store.list_workers() if w.state == coordinator_pb2.LIVE]
        active = self.store.active_jobs()
        capacities = [_Capacity(w, active) for w in live]
        most_free_gpus = max((c.free_gpus for c in capacities), default=0)
        cpu_slot_free = any(not c.cpu_busy for c in capacities)
        for job in self.store.queued_jobs():
            need = _gpus(job)
            source = job.spec.model.job if job.spec.model.source == "job" else ""
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
            if reason != job.reason:
                self.store.update_job(job.id, reason=reason, now=self._clock())

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

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
- A multi-node job (resources.nodes = N > 1) gets N distinct workers that each fit it, all
  at once or none (gang scheduling: how and why in coordinator/gang.py). Like any job too
  big for the free workers, one that does not fit now does not block smaller jobs behind
  it (backfill): they keep the fleet busy, at the risk of starving it.

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
- A multi-node job lives and dies as one (its members share the attempt): when any member
  is lost, released or fails, the gang is requeued, retried or failed as above, and the
  other members' heartbeats tell them to kill their training processes (lost_job_ids).
"""

from __future__ import annotations

import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tunefleet import limits
from tunefleet import spec as specs
from tunefleet.coordinator import gang
from tunefleet.coordinator.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    invalid_spec,
)
from tunefleet.coordinator.event_bus import EventBus
from tunefleet.coordinator.gang import Capacity
from tunefleet.coordinator.store import ACTIVE_STATES, JobStore, WorkerRecord
from tunefleet.states import TERMINAL_STATES, is_terminal, state_name
from tunefleet.v1 import coordinator_pb2, job_pb2, spec_pb2

log = logging.getLogger(__name__)

# Fleets up to this size (workers + active + queued jobs) are explained on every change;
# larger ones by the lease watch.
_EXPLAIN_AT_ONCE = 256

# An AcquireJob long poll never holds a server thread longer than this.
MAX_ACQUIRE_WAIT_S = 60.0

# Requeues that are not crashes (a lost, restarted or draining worker, a released job) do
# not count against train.max_restarts, but they are bounded too: a job that keeps
# losing its workers (say, it makes each of them run out of disk or memory) fails after
# this many instead of cycling through the fleet forever.
MAX_REQUEUES = 20

_DEFAULT_FINISH_REASONS = {
    job_pb2.SUCCEEDED: "finished on worker {worker}",
    job_pb2.FAILED: "failed on worker {worker}",
    job_pb2.CANCELLED: "cancelled by user",
}


def _seconds(timestamp) -> float:
    return timestamp.ToNanoseconds() / 1e9


def _gpus(job: job_pb2.Job) -> int:
    return job.spec.resources.gpus


def _need(spec: bytes) -> tuple[int, str, int]:
    """(GPUs, source job id, nodes) of a serialized spec: what explaining a wait looks at."""
    parsed = spec_pb2.JobSpec.FromString(spec)
    source = parsed.model.job if parsed.model.source == "job" else ""
    return parsed.resources.gpus, source, max(parsed.resources.nodes, 1)


def _prepare_spec(spec: spec_pb2.JobSpec, check_paths: bool) -> spec_pb2.JobSpec:
    """Validates and resolves a submitted spec with tunefleet.spec, the one validator."""
    try:
        return specs.prepare(spec, check_paths=check_paths)
    except specs.SpecError as exc:
        raise invalid_spec([(e.path, e.message) for e in exc.errors]) from None


@dataclass(eq=False)
class _Report:
    """One ReportEvents call on its way into a group commit, and how it ended."""

    worker_id: str
    job_id: str
    attempt: int
    events: list[job_pb2.Event]
    batch_seq: int
    done: bool = False
    last_seq: int = 0
    error: Exception | None = None


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
        max_requeues: int = MAX_REQUEUES,
    ):
        self.store = store
        self.max_requeues = max_requeues
        # Workers that said (in their heartbeats) they cannot take jobs now, and why. Kept in
        # memory: after a coordinator restart the next heartbeat says it again.
        self._unhealthy: dict[str, str] = {}
        self.bus = bus
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lease_timeout_s = lease_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.check_paths = check_paths
        self._clock = clock
        self._lock = threading.RLock()
        self._work_available = threading.Condition(self._lock)
        # Event reports waiting for the next group commit (see _store_reports).
        self._reports_lock = threading.Lock()
        self._reports: list[_Report] = []
        self._closing = threading.Event()
        # Explaining waits reads every worker, active and queued job; a large fleet is
        # explained by the lease watch (see _explain_waiting).
        self._explain_pending = False
        self._explain_size = 0
        self._needs: dict[str, tuple[int, str, int]] = {}  # queued job id -> _need(spec)
        self._waiting = gang.WaitingWorkers()  # the workers a multi-node job can take now
        # After a coordinator restart every LIVE worker gets a fresh lease: the workers kept
        # running while we were down and deserve lease_timeout_s to reach us again before
        # their jobs are written off.
        for state in (coordinator_pb2.LIVE, coordinator_pb2.DRAINING):
            store.renew_leases(state, self._clock())
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
        reason = limits.clip_chars(reason, limits.MAX_REASON_CHARS) or "cancelled by user"
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
        active = gang.by_holder(self.store.active_jobs())
        return [
            self._worker_message(record, active.get(record.id, ()))
            for record in self.store.list_workers()
        ]

    def drain_worker(self, worker_id: str) -> coordinator_pb2.Worker:
        """Marks a live worker DRAINING: it is placed nothing more, and its next heartbeat
        tells it to checkpoint and hand back its job, then exit. Draining twice is a no-op."""
        if not worker_id:
            raise InvalidArgument("DrainWorkerRequest.worker_id is required")
        with self._lock:
            worker = self.store.get_worker(worker_id)
            if worker is None:
                raise NotFound(f"worker {worker_id} not found; `ftctl workers` lists them")
            if worker.state == coordinator_pb2.LOST:
                raise FailedPrecondition(f"worker {worker_id} is lost; there is nothing to drain")
            if worker.state != coordinator_pb2.DRAINING:
                self.store.set_worker_state(worker_id, coordinator_pb2.DRAINING)
                log.info("worker %s: drain requested", worker_id)
            worker = self.store.get_worker(worker_id)
            return self._worker_message(worker, self.store.active_jobs(worker_id))

    def _worker_message(
        self, record: WorkerRecord, active: Iterable[job_pb2.Job]
    ) -> coordinator_pb2.Worker:
        capacity = Capacity(record, active)
        return coordinator_pb2.Worker(
            id=record.id,
            hostname=record.hostname,
            resources=record.resources,
            state=record.state,
            free_gpus=max(capacity.free_gpus, 0),
            job_ids=capacity.job_ids,
            last_heartbeat_age_s=max(self._clock() - record.last_heartbeat, 0.0),
            address=record.address,
            unhealthy_reason=self._unhealthy.get(record.id, ""),
        )

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
            self._unhealthy.pop(worker_id, None)  # its heartbeats say so again if it still is
            self._waiting.take(worker_id)  # a part handed to its previous life is void
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
        self, worker_id: str, running_job_ids: Iterable[str], *, unhealthy_reason: str = ""
    ) -> tuple[list[str], list[str], bool, bool]:
        """Renews the worker's lease and records whether it can take jobs; returns (job ids
        it must stop, the part of those that are no longer its own, whether it is known,
        whether it must drain)."""
        running = set(running_job_ids)
        with self._lock:
            worker = self.store.get_worker(worker_id)
            if worker is None or worker.state == coordinator_pb2.LOST:
                return sorted(running), sorted(running), False, False
            if unhealthy_reason != self._unhealthy.get(worker_id, ""):
                if unhealthy_reason:
                    log.warning("worker %s unhealthy: %s", worker_id, unhealthy_reason)
                    self._unhealthy[worker_id] = unhealthy_reason
                else:
                    log.info("worker %s healthy again", worker_id)
                    del self._unhealthy[worker_id]
                    self._work_available.notify_all()
            now = self._clock()
            self.store.touch_worker(worker_id, now)
            mine = {job.id: job for job in self.store.active_jobs(worker_id)}
            lost = {
                job_id
                for job_id in running
                if job_id not in mine and not self._member_finishing(job_id, worker_id, now)
            }
            stop = lost | {job.id for job in mine.values() if job.cancel_requested}
            for job in mine.values():
                # An assignment whose AcquireJob response never reached the worker, or a
                # job the worker dropped without a word (it lists a job until it has told
                # us how the job ended). Quiet for a lease: a fresh assignment or a late
                # report is not mistaken for one. A member of a multi-node job is judged
                # by its own part (other members' reports do not vouch for it).
                member = gang.member_of(job, worker_id)
                since = member.updated_at if member is not None else job.updated_at
                quiet_for = now - _seconds(since)
                if job.id in running or quiet_for <= self.lease_timeout_s:
                    continue
                if job.state == job_pb2.ASSIGNED or (
                    member is not None and member.state == job_pb2.ASSIGNED
                ):
                    self._release(job, f"worker {worker_id} never started the job")
                else:
                    self._release(job, f"worker {worker_id} no longer runs the job")
            return sorted(stop), sorted(lost), True, worker.state == coordinator_pb2.DRAINING

    def acquire(
        self,
        worker_id: str,
        wait_s: float,
        is_active: Callable[[], bool] = lambda: True,
        *,
        rendezvous_port: int = 0,
    ) -> job_pb2.Job | None:
        """Long poll: assigns the best queued job this worker can run, waiting up to wait_s.

        `rendezvous_port` (a port free on the worker's host; 0 = none) lets this worker host
        a multi-node job as machine rank 0; while it waits, other workers' polls may also
        place it in a gang as another rank, which it then returns (see _deliver)."""
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_ACQUIRE_WAIT_S)
        with self._work_available, self._waiting.polling(worker_id, rendezvous_port):
            while True:
                if self._closing.is_set():
                    raise Unavailable("the coordinator is shutting down")
                worker = self.store.get_worker(worker_id)
                if worker is None or worker.state == coordinator_pb2.LOST:
                    raise FailedPrecondition(
                        f"worker {worker_id} is not registered (or was lost); register again"
                    )
                job = None
                # A DRAINING or unhealthy one waits out the poll.
                if worker.state == coordinator_pb2.LIVE and worker_id not in self._unhealthy:
                    job = self._deliver(worker_id) or self._place(worker, rendezvous_port)
                remaining = deadline - time.monotonic()
                if job is not None or remaining <= 0 or not is_active():
                    return job
                # Wakes early on submit/finish/gang placement; the 1 s cap notices a vanished
                # caller, and a retry whose backoff ends sooner is placed when it ends.
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
        JobStore.append_report). Of a multi-node job's other members (rank > 0) only log
        lines are kept: rank 0 runs the global main process, the one source of metrics and
        reports, and the batch_seq of each member counts on its own, so theirs are not
        deduplicated (a retried batch of log lines may show twice)."""
        events = list(events)
        for i, event in enumerate(events):
            if event.ByteSize() > limits.MAX_EVENT_TEXT_BYTES:  # workers bound them; so do we
                limits.bound_event(event)
            kind = event.WhichOneof("kind")
            if kind is None:
                raise InvalidArgument(f"events[{i}] has no kind (log, metrics or report)")
            if kind == "state_change":
                raise InvalidArgument(
                    f"events[{i}]: state changes are made by the coordinator; "
                    "end a job with FinishJob"
                )
        ticket = _Report(worker_id, job_id, attempt, events, batch_seq)
        with self._reports_lock:
            self._reports.append(ticket)
        with self._lock:
            if not ticket.done:  # else an earlier lock holder stored it with its own
                self._store_reports()
        if ticket.error is not None:
            raise ticket.error
        return ticket.last_seq

    def _store_reports(self) -> None:
        """Stores every queued report in one transaction, so they share one disk flush
        (call with the lock held): whoever gets the lock first commits for all the reports
        that queued while the previous commit ran. Each report is still atomic on its own
        (a savepoint) and fails alone; followers hear of events only once they are durable."""
        with self._reports_lock:
            batch, self._reports = self._reports, []
        published: list[tuple[str, int, list[job_pb2.Event]]] = []
        try:
            with self.store.atomic():
                for ticket in batch:
                    mark = len(published)
                    try:
                        with self.store.atomic():
                            ticket.last_seq = self._store_report(ticket, published)
                    except Exception as exc:  # its savepoint is rolled back; others go on
                        del published[mark:]
                        ticket.error = exc
        except Exception as exc:  # the commit failed: none of them is stored
            published = []
            for ticket in batch:
                ticket.error = ticket.error or exc
        finally:
            for ticket in batch:
                ticket.done = True
        for job_id, seq, events in published:
            self.bus.publish(job_id, seq, events)

    def _store_report(
        self, ticket: _Report, published: list[tuple[str, int, list[job_pb2.Event]]]
    ) -> int:
        worker_id, job_id, attempt = ticket.worker_id, ticket.job_id, ticket.attempt
        events, batch_seq = ticket.events, ticket.batch_seq
        job = self._owned_job(worker_id, job_id, attempt)
        now = self._clock()
        member = gang.member_of(job, worker_id)
        where = f"worker {worker_id}"
        if member is not None:
            where += f" (machine rank {member.rank})"
            if member.state == job_pb2.ASSIGNED:
                self.store.set_member(job_id, member.rank, job_pb2.RUNNING, now=now)
            if member.rank > 0:
                kept = [e for e in events if e.WhichOneof("kind") == "log"]
                if len(kept) < len(events):
                    log.warning(
                        "job %s: dropped %d events other than log lines from %s",
                        job_id,
                        len(events) - len(kept),
                        where,
                    )
                events, batch_seq = kept, 0
        if job.state == job_pb2.ASSIGNED:
            job, event = self.store.transition(
                job_id,
                job_pb2.RUNNING,
                f"training started on {where}",
                started_at=now,
                now=now,
            )
            published.append((job_id, event.seq, []))
        stored, duplicate = self.store.append_report(job_id, attempt, batch_seq, events, now=now)
        if duplicate:
            log.info("job %s: batch %d of attempt %d was stored before", job_id, batch_seq, attempt)
        last_seq = stored[-1].seq if stored else job.last_seq
        published.append((job_id, last_seq, stored))
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
        reason = limits.clip_chars(reason, limits.MAX_REASON_CHARS)
        with self._lock:
            job = self.get_job(job_id)
            reason = reason or _DEFAULT_FINISH_REASONS[state].format(worker=worker_id)
            member = gang.member_of(job, worker_id, attempt)
            if member is not None:
                self._finish_member(job, member, state, reason, artifacts, summary, retryable)
                return
            if job.state == state and job.worker_id == worker_id and job.attempt == attempt:
                return  # a retried FinishJob whose first reply was lost
            job = self._owned_job(worker_id, job_id, attempt)
            if state == job_pb2.FAILED and retryable and not job.cancel_requested:
                self._retry(job, reason)
                return
            self._finish(job, state, reason, artifacts=artifacts or {}, summary=summary or {})

    def release(self, worker_id: str, job_id: str, attempt: int, reason: str = "") -> None:
        """The worker gives its attempt back unfinished (draining, preempted): requeue. For
        a multi-node job that is the whole gang; a member's release after the gang already
        ended (this attempt) is only recorded."""
        reason = limits.clip_chars(reason, limits.MAX_REASON_CHARS)
        reason = reason or f"released by worker {worker_id}"
        with self._lock:
            job = self.get_job(job_id)
            member = gang.member_of(job, worker_id, attempt)
            if member is not None:
                self.store.set_member(job_id, member.rank, job_pb2.QUEUED, reason)
                if job.state in ACTIVE_STATES:
                    self._release(job, f"{reason} (machine rank {member.rank})")
                return
            job = self._owned_job(worker_id, job_id, attempt)
            self._release(job, reason)

    # ---- liveness --------------------------------------------------------------------

    def expire_leases(self) -> list[str]:
        """Marks workers silent for longer than the lease as LOST; returns their ids."""
        lost = []
        with self._lock:
            now = self._clock()
            for worker in self.store.list_workers():
                silent_for = now - worker.last_heartbeat
                if worker.state == coordinator_pb2.LOST or silent_for <= self.lease_timeout_s:
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
                    for state in (coordinator_pb2.LIVE, coordinator_pb2.DRAINING):
                        self.store.renew_leases(state, self._clock())
                    continue
                self.expire_leases()
                if self._explain_pending:
                    self._explain_pass()  # outside the lock: see _explain_waiting
            except Exception:  # keep watching: one bad pass must not stop liveness
                log.exception("lease check failed")

    # ---- internals (call with the lock held) -------------------------------------------

    def _owned_job(self, worker_id: str, job_id: str, attempt: int) -> job_pb2.Job:
        """The job, if `attempt` on `worker_id` (its worker, or a member of the gang) is its
        current, unfinished placement."""
        job = self.get_job(job_id)
        if (
            (job.worker_id != worker_id and gang.member_of(job, worker_id) is None)
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

    def _place(self, worker: WorkerRecord, rendezvous_port: int = 0) -> job_pb2.Job | None:
        capacity = Capacity(worker, self.store.active_jobs(worker.id))
        now = self._clock()
        pool = None  # the other workers a gang could take, read once per placement
        for job in self.store.iter_queued():
            if not capacity.fits(job) or _seconds(job.not_before) > now:
                continue
            members = [worker]
            if gang.is_gang(job):
                if not rendezvous_port or not worker.address:
                    continue  # this worker cannot host the rendezvous
                if pool is None:
                    pool = self._gang_pool(worker.id)
                members = gang.choose_members(job, worker, pool)
                if members is None:
                    continue  # not enough workers free at once: smaller jobs go first
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
            return self._assign(job, members, rendezvous_port, spec)
        return None

    def _assign(
        self,
        job: job_pb2.Job,
        workers: list[WorkerRecord],
        rendezvous_port: int,
        spec: spec_pb2.JobSpec | None,
    ) -> job_pb2.Job:
        """Starts the next attempt of `job` on `workers` (rank 0 first), all in one step."""
        fields = {"attempt": job.attempt + 1, "worker_id": workers[0].id, "report_batch": 0}
        if spec is not None:
            fields["spec"] = spec
        members = [
            job_pb2.JobMember(rank=rank, worker_id=w.id, address=w.address, state=job_pb2.ASSIGNED)
            for rank, w in enumerate(workers)
            if gang.is_gang(job)
        ]
        if members:
            fields["members"] = members
            fields["rendezvous"] = gang.endpoint(workers[0].address, rendezvous_port)
        placed = job_pb2.Job(worker_id=workers[0].id, members=members)
        reason = f"assigned to {gang.describe(placed)}"
        job, event = self.store.transition(
            job.id, job_pb2.ASSIGNED, reason, now=self._clock(), **fields
        )
        self.bus.publish(job.id, event.seq)
        log.info("job %s assigned to %s (attempt %d)", job.id, gang.describe(job), job.attempt)
        for other in workers[1:]:
            self._waiting.hand(other.id, job.id, job.attempt)
        if len(workers) > 1:
            self._work_available.notify_all()  # the other members' polls take their parts
        self._explain_waiting()
        return job

    def _gang_pool(self, first: str) -> list[tuple[WorkerRecord, Capacity]]:
        """The workers that could join a gang `first` places now (gang.pool_ids), each with
        what it has left."""
        ids = self._waiting.pool_ids(first)
        held = gang.by_holder(self.store.active_jobs()) if ids else {}
        pool = []
        for worker_id in ids:
            worker = self.store.get_worker(worker_id)
            if (
                worker is not None
                and worker.state == coordinator_pb2.LIVE
                and worker_id not in self._unhealthy
            ):
                pool.append((worker, Capacity(worker, held.get(worker_id, ()))))
        return pool

    def _deliver(self, worker_id: str) -> job_pb2.Job | None:
        """This worker's part of a multi-node job another worker's poll placed, if it still
        stands (the gang may have been stopped meanwhile)."""
        placed = self._waiting.take(worker_id)
        if placed is None:
            return None
        job = self.store.get_job(placed[0])
        if job is None or job.attempt != placed[1] or job.state not in ACTIVE_STATES:
            return None
        member = gang.member_of(job, worker_id)
        return job if member is not None and member.state in ACTIVE_STATES else None

    def _finish_member(
        self,
        job: job_pb2.Job,
        member: job_pb2.JobMember,
        state: int,
        reason: str,
        artifacts: dict[str, str] | None,
        summary: dict[str, float] | None,
        retryable: bool,
    ) -> None:
        """How one member's part ended: recorded on the member, and what it does to the job
        as gang.end_action says."""
        self.store.set_member(job.id, member.rank, state, reason, now=self._clock())
        action = gang.end_action(job, member, state, retryable)
        if member.rank > 0:
            reason = f"machine rank {member.rank} on worker {member.worker_id}: {reason}"
        if action == gang.RETRY:
            self._retry(job, reason)
        elif action == gang.FINISH:
            self._finish(job, state, reason, artifacts=artifacts or {}, summary=summary or {})
        elif action == gang.RELEASE:
            self._release(job, reason)

    def _member_finishing(self, job_id: str, worker_id: str, now: float) -> bool:
        job = self.store.get_job(job_id)
        return job is not None and gang.finishing(job, worker_id, now, self.lease_timeout_s)

    def _finish(self, job: job_pb2.Job, state: int, reason: str, **fields) -> None:
        now = self._clock()
        if job.members and state != job_pb2.SUCCEEDED:
            # Members that succeed along with rank 0 say so themselves.
            fields["end_members"] = (job_pb2.CANCELLED, f"stopped with the gang: {reason}")
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
        requeues = job.attempt - job.restarts  # placements that ended without a crash
        if requeues > self.max_requeues:
            self._finish(
                job,
                job_pb2.FAILED,
                f"{reason}; gave up after {requeues} attempts ended without finishing (workers "
                f"lost, restarted, draining or releasing it; the limit is {self.max_requeues})",
            )
            return
        self._requeue(
            job,
            reason,
            f"attempt {job.attempt} on {gang.describe(job)} ended: {detail or reason}; "
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
            f"attempt {job.attempt} on {gang.describe(job)} crashed: {reason}; restart "
            f"{restarts} of {limit} (train.max_restarts) in {delay:g} s, from the newest "
            "checkpoint",
            restarts=restarts,
            not_before=self._clock() + delay,
        )

    def _requeue(self, job: job_pb2.Job, reason: str, note: str, **fields) -> None:
        # The attempt stays; the next placement bumps it, which fences the old one: its
        # late reports no longer match (and are refused while the job is QUEUED anyway).
        # The other members of a gang learn from their next heartbeat that the job is no
        # longer theirs (lost_job_ids) and kill their training processes.
        if job.members:
            fields["end_members"] = (job_pb2.CANCELLED, f"stopped with the gang: {reason}")
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
        queued = self.store.queued_brief()
        if not queued:  # nothing waits: no need to read the fleet
            self._explain_size = 0
            return
        live = [
            w
            for w in self.store.list_workers()
            if w.state == coordinator_pb2.LIVE and w.id not in self._unhealthy
        ]
        active = gang.by_holder(self.store.active_jobs())
        self._explain_size = len(live) + sum(map(len, active.values())) + len(queued)
        capacities = [Capacity(w, active.get(w.id, ())) for w in live]
        most_free_gpus = max((c.free_gpus for c in capacities), default=0)
        cpu_slot_free = any(not c.cpu_busy for c in capacities)
        fitting: dict[int, int] = {}  # GPUs -> how many workers could take that much now
        now = self._clock()
        reasons: dict[str, str] = {}
        needs: dict[str, tuple[int, str, int]] = {}
        for job_id, current, spec, not_before in queued:
            need, source, nodes = needs[job_id] = self._needs.get(job_id) or _need(spec)
            if nodes > 1 and need not in fitting:
                fitting[need] = sum(
                    c.free_gpus >= need if need > 0 else not c.cpu_busy for c in capacities
                )
            if not_before > now:
                continue  # its reason says when its restart is due
            source_job = self.store.get_job(source) if source else None
            if source_job is not None and source_job.state != job_pb2.SUCCEEDED:
                reason = (
                    f"waiting for source job {source} to succeed "
                    f"(it is {state_name(source_job.state)})"
                )
            elif nodes > 1 and fitting[need] < nodes:
                what = f"{need} free GPUs each" if need > 0 else "a free CPU slot"
                reason = f"waiting for {nodes} workers with {what} at once ({fitting[need]} now)"
            elif nodes > 1:
                continue
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

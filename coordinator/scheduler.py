"""Scheduler: the coordinator's control plane and the one holder of its lock.

Every change to jobs and workers goes through here under one lock, so a check ("is this
attempt still the job's current one?") and the write that depends on it are atomic. The
lock is never held while waiting: long-polling workers wait on a Condition that submits
and finished jobs notify.

Who owns what (each module's docstring says more):
- scheduler.py (here): the lock and the API the gRPC service calls (it talks to nothing
  else); submits and cancels; leases and the lease watch; the long poll that places jobs.
  It decides *when* something happens and reads what the helpers need.
- membership.py: workers' registration, heartbeats, drains and sign-offs (a mixin of the
  Scheduler, under its lock).
- placement.py: which queued job fits a worker, in which order, with which gang members,
  and why the others wait. Pure functions: no lock, no store.
- lifecycle.py: what each transition of a placed job writes (assign, finish, release,
  retry with backoff, requeue) and the failure policy; called with this lock held.
- ingest.py: workers' event reports, stored by group commit under this lock.
- waits.py: when to explain why queued jobs wait (under this lock, or by the lease watch).
- gang.py: a multi-node job's members and what a member's end does to the job.
- worker_instances.py: which worker process holds each worker id (one id started twice).
- store/: all SQL. event_bus.py: followers, and the follow loop of every event stream.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from tunefleet import limits
from tunefleet import spec as specs
from tunefleet.coordinator import event_bus, gang, placement
from tunefleet.coordinator.errors import (
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    check_key_reuse,
    invalid_spec,
)
from tunefleet.coordinator.event_bus import EventBus, Subscription
from tunefleet.coordinator.ingest import Reported, ReportIngest
from tunefleet.coordinator.lifecycle import DEFAULT_FINISH_REASONS, MAX_REQUEUES, JobLifecycle
from tunefleet.coordinator.membership import WorkerMembership
from tunefleet.coordinator.placement import Capacity
from tunefleet.coordinator.store import JobStore, WorkerRecord
from tunefleet.coordinator.sweeps import Sweeps
from tunefleet.coordinator.waits import WaitReasons
from tunefleet.coordinator.worker_instances import WorkerInstances
from tunefleet.states import ACTIVE_STATES, TERMINAL_STATES, is_terminal, state_name
from tunefleet.v1 import coordinator_pb2, job_pb2, spec_pb2

log = logging.getLogger(__name__)

# An AcquireJob long poll never holds a server thread longer than this.
MAX_ACQUIRE_WAIT_S = 60.0


class Scheduler(WorkerMembership):
    def __init__(
        self,
        store: JobStore,
        bus: EventBus,
        *,
        heartbeat_interval_s: float = 2.0,
        lease_timeout_s: float = 10.0,
        check_paths: bool = False,
        storage_uri: str = "",
        retry_backoff_s: float = 1.0,
        retry_backoff_max_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        max_requeues: int = MAX_REQUEUES,
        sampler_process: bool = False,
    ):
        self.store = store
        self.bus = bus
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lease_timeout_s = lease_timeout_s
        # The coordinator runs the schema check only (issue 15): a spec's paths are the
        # workers' paths, which this machine need not have (a worker checks them before it
        # trains). `check_paths` is kept for callers that still pass it and changes nothing.
        self.check_paths = False
        # Told to clients (ListWorkers): where they upload a job's local files.
        self.storage_uri = storage_uri
        self._clock = clock
        self._lock = threading.RLock()
        self._work_available = threading.Condition(self._lock)
        self._jobs = JobLifecycle(
            store,
            bus,
            clock=clock,
            on_change=self._changed,
            retry_backoff_s=retry_backoff_s,
            retry_backoff_max_s=retry_backoff_max_s,
            max_requeues=max_requeues,
        )
        self._reports = ReportIngest(self._jobs, self._lock, clock=clock)
        # Sweeps create trials as jobs and hear how each one goes (coordinator/sweeps.py).
        self.sweeps = Sweeps(
            store,
            self._lock,
            queue_job=self._queue_job,
            cancel_job=self.cancel,
            clock=clock,
            check_paths=False,
            on_ended=self._sweep_ended,
            # TPE sweeps' trials drawn on another core (coordinator/sampler_process.py).
            sampler_process=sampler_process,
        )
        self._jobs.sweeps = self.sweeps
        self._reports.on_stored = self.sweeps.events_stored
        # Workers that said (in their heartbeats) they cannot take jobs now, and why. Kept in
        # memory: after a coordinator restart the next heartbeat says it again.
        self._unhealthy: dict[str, str] = {}
        self._closing = threading.Event()
        self._waits = WaitReasons(store, self._unhealthy, clock=clock, source_job=self.find_source)
        self._waiting = gang.WaitingWorkers()  # the workers a multi-node job can take now
        # Which process holds each worker id: one id started twice is refused, not shared.
        self._instances = WorkerInstances(
            clock=clock, heartbeat_interval_s=heartbeat_interval_s, lease_timeout_s=lease_timeout_s
        )
        # After a coordinator restart every LIVE worker gets a fresh lease: the workers kept
        # running while we were down and deserve lease_timeout_s to reach us again before
        # their jobs are written off.
        self._renew_leases()
        self.sweeps.recover()
        self._lease_watch = threading.Thread(
            target=self._watch_leases, name="tunefleet-lease-watch", daemon=True
        )

    def start(self) -> None:
        self._lease_watch.start()

    def close(self) -> None:
        """Stops the lease watch and the sampler process, and sends long-polling workers
        away (UNAVAILABLE)."""
        self._closing.set()
        with self._work_available:
            self._work_available.notify_all()
        if self._lease_watch.is_alive():
            self._lease_watch.join(timeout=5)
        self.sweeps.close()

    # ---- client API ------------------------------------------------------------------

    def submit(
        self, spec: spec_pb2.JobSpec, idempotency_key: str = "", *, submitter: str = ""
    ) -> job_pb2.Job:
        """Validates and queues a job; a retried submit (same key) returns the first job.
        `submitter` is the authenticated caller's name ("" without authentication)."""
        if spec.HasField("sweep"):
            message = "a job has no sweep block; submit the file as a sweep (ftctl sweep submit)"
            raise invalid_spec([("sweep", message)])
        try:  # with tunefleet.spec, the one validator: its schema check, no files read
            spec = specs.prepare(spec, check_paths=False)
        except specs.SpecError as exc:
            raise invalid_spec([(e.path, e.message) for e in exc.errors]) from None
        with self._lock:
            if idempotency_key:
                existing = self.store.find_by_idempotency_key(idempotency_key)
                if existing is not None:
                    check_key_reuse(existing.id, existing.spec, spec)
                    return existing
            return self._queue_job(spec, submitter, idempotency_key)

    def _queue_job(
        self, spec: spec_pb2.JobSpec, submitter: str, idempotency_key: str = ""
    ) -> job_pb2.Job:
        """Inserts a prepared spec as a QUEUED job (a submit, or a sweep's trial); call with
        the lock held."""
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
        log.info(
            "job %s submitted (priority %d, gpus %d)",
            job_id,
            spec.priority,
            job.spec.resources.gpus,
        )
        if source is not None:
            self._jobs.fail_dependents_of(source)
        explained = self._waits.changed()  # as _changed(); read again if that or the
        self._work_available.notify_all()  # source's failure changed the job's row since
        return job if source is None and job_id not in explained else self.get_job(job_id)

    def get_job(self, job_id: str) -> job_pb2.Job:
        """The job, or NOT_FOUND."""
        return self._jobs.get_job(job_id)

    def find_job(self, job_id: str) -> job_pb2.Job | None:
        return self.store.get_job(job_id)

    def find_source(self, source_id: str) -> job_pb2.Job | None:
        """What `model.job` names: a job, or a sweep (its best trial's job once it
        SUCCEEDED, else a stand-in in the sweep's state; Sweeps.as_source)."""
        if source_id.startswith("sweep-"):
            return self.sweeps.as_source(source_id)
        return self.store.get_job(source_id)

    def list_jobs(
        self, states: Iterable[int], limit: int, *, submitter: str | None, offset: int
    ) -> list[job_pb2.Job]:
        """Newest first (JobStore.list_jobs)."""
        return self.store.list_jobs(states, limit, submitter=submitter, offset=offset)

    def follow_events(
        self,
        job_id: str,
        after_seq: int,
        *,
        follow: bool,
        is_active: Callable[[], bool],
        on_subscribe: Callable[[Subscription], None],
    ) -> Iterator[list[job_pb2.Event]]:
        """A job's events after `after_seq`, then live ones if `follow` (event_bus.follow).
        Reads only: it never takes the lock."""
        return event_bus.follow(
            self.bus,
            job_id,
            after_seq,
            stored_after=self.store.events_after,
            get_job=self.get_job,
            follow=follow,
            is_active=is_active,
            on_subscribe=on_subscribe,
        )

    def cancel(self, job_id: str, reason: str = "") -> job_pb2.Job:
        """QUEUED jobs end at once; running ones are flagged and their worker stops them."""
        reason = limits.clip_chars(reason, limits.MAX_REASON_CHARS) or "cancelled by user"
        with self._lock:
            job = self.get_job(job_id)
            if is_terminal(job.state):
                raise FailedPrecondition(f"job {job_id} already {state_name(job.state)}")
            if job.state == job_pb2.QUEUED:
                self._jobs.finish(job, job_pb2.CANCELLED, reason)
            elif not job.cancel_requested:
                self._jobs.request_cancel(job, reason)
            return self.get_job(job_id)

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
    ) -> Reported:
        """Stores a worker's events for its current attempt; returns the job's last seq and
        whether the worker must stop the job now (cancelled, or pruned on these metrics).

        A batch_seq already stored for this attempt is a retry and stores nothing; metrics
        of steps already reported (by an earlier attempt) are dropped (see
        JobStore.append_report); of a multi-node job's other members only log lines are
        kept. Reports that arrive together share one commit (see ingest.py)."""
        return self._reports.report(worker_id, job_id, attempt, events, batch_seq)

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
        if state not in TERMINAL_STATES or state == job_pb2.PRUNED:  # PRUNED is the sweep's
            raise InvalidArgument(
                f"state must be SUCCEEDED, FAILED or CANCELLED, not {state_name(state)}"
            )
        reason = limits.clip_chars(reason, limits.MAX_REASON_CHARS)
        with self._lock:
            job = self.get_job(job_id)
            reason = reason or DEFAULT_FINISH_REASONS[state].format(worker=worker_id)
            member = gang.member_of(job, worker_id, attempt)
            if member is not None:
                self._jobs.finish_member(job, member, state, reason, artifacts, summary, retryable)
                return
            if job.state == state and job.worker_id == worker_id and job.attempt == attempt:
                return  # a retried FinishJob whose first reply was lost
            job = self._jobs.check_owned(job, worker_id, attempt)
            if state == job_pb2.FAILED and retryable and not job.cancel_requested:
                self._jobs.retry(job, reason)
                return
            self._jobs.finish(job, state, reason, artifacts=artifacts or {}, summary=summary or {})

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
                    self._jobs.release(job, f"{reason} (machine rank {member.rank})")
                return
            self._jobs.release(self._jobs.check_owned(job, worker_id, attempt), reason)

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
                    self._jobs.release(
                        job,
                        "worker lost",
                        detail=f"worker {worker.id} sent no heartbeat for {silent_for:.1f} s "
                        f"(lease {self.lease_timeout_s:g} s)",
                    )
                lost.append(worker.id)
            if lost:
                self._waits.changed()
        return lost

    def _renew_leases(self) -> None:
        for state in (coordinator_pb2.LIVE, coordinator_pb2.DRAINING):
            self.store.renew_leases(state, self._clock())

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
                    self._renew_leases()
                    continue
                self.expire_leases()
                if self._waits.pending:
                    self._waits.explain()  # outside the lock: see waits.py
            except Exception:  # keep watching: one bad pass must not stop liveness
                log.exception("lease check failed")

    # ---- placement (call with the lock held) -------------------------------------------

    def _place(self, worker: WorkerRecord, rendezvous_port: int = 0) -> job_pb2.Job | None:
        """Assigns the first queued job placement.first_fit finds for `worker`, if any."""
        for found in placement.first_fit(
            self._queue(),
            worker,
            Capacity(worker, self.store.active_jobs(worker.id)),
            now=self._clock(),
            rendezvous_port=rendezvous_port,
            gang_pool=lambda: self._gang_pool(worker.id),
            source_job=self.find_source,
        ):
            if found.refusal:
                self._jobs.finish(found.job, job_pb2.FAILED, found.refusal)
                continue
            job = self._jobs.assign(found.job, found.members, rendezvous_port, found.spec)
            for other in found.members[1:]:
                self._waiting.hand(other.id, job.id, job.attempt)
            if len(found.members) > 1:
                self._work_available.notify_all()  # the other members' polls take their parts
            self._waits.changed()
            return job
        return None

    def _queue(self) -> Iterable[job_pb2.Job]:
        """The queued jobs in placement order (placement.fair_order), read lazily."""
        heads = self.store.queued_heads()
        if len(heads) < 2:  # nobody to interleave with
            return self.store.iter_queued(head=heads[0]) if heads else ()
        queues = [self.store.iter_queued(submitter=h.submitter, head=h) for h in heads]
        return placement.fair_order(queues, self.store.placed_counts(h.submitter for h in heads))

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

    def _next_backoff_end(self) -> float:
        """Seconds until the earliest retry backoff of a queued job ends (inf: none)."""
        now = self._clock()
        end = self.store.next_not_before(now)
        return end - now if end is not None else float("inf")

    def _changed(self) -> None:
        """The queue or the fleet changed: waits need explaining again, and long polls may
        find work now."""
        self._waits.changed()
        self._work_available.notify_all()

    # ---- names -------------------------------------------------------------------------

    def _source_job(self, spec: spec_pb2.JobSpec) -> job_pb2.Job | None:
        if spec.model.source != "job":
            return None
        if not spec.model.job:
            raise invalid_spec([("model.job", "required when model.source is job")])
        source = self.find_source(spec.model.job)
        if source is None:
            what = "sweep" if spec.model.job.startswith("sweep-") else "job"
            raise invalid_spec([("model.job", f"{what} {spec.model.job} not found")])
        return source

    def _sweep_ended(self, source: job_pb2.Job) -> None:
        """A sweep ended (lock held): the jobs chained on it fail with it, or may start
        now from its best trial's model."""
        self._jobs.fail_dependents_of(source)
        self._changed()

    def _new_job_id(self) -> str:
        while True:
            job_id = f"job-{secrets.token_hex(4)}"
            if not self.store.has_job(job_id):
                return job_id

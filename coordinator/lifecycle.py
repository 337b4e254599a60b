"""JobLifecycle: what each transition of a placed job writes, and the failure policy that
picks it (finish, release, retry with backoff, requeue, fail the dependents).

The Scheduler decides *when* a job moves (a lease ran out, a worker finished its attempt)
and calls these with its lock held; none of them takes a lock, so the Scheduler's
read-check-write sequences stay atomic. Each transition stores the job row and its
state_change event in one transaction (JobStore.transition), publishes it to followers,
and then tells the Scheduler that the queue or the fleet changed (`on_change`: explain
waits again, wake long polls).

Failures (each requeue or retry appends a log event with the cause and a state change):
- A worker holds its jobs under a lease that its heartbeats renew. A worker silent for
  longer than the lease is LOST and its jobs go back to QUEUED ("worker lost"); so do
  the jobs of a worker that registers again (it restarted) and a job the worker released
  (it is draining, or the training process was preempted). None of these count against
  train.max_restarts: the job did nothing wrong (`release`), but a job that keeps losing
  its workers fails after `max_requeues` of them.
- A training process that crashed (FinishJob FAILED with retryable) is queued again after
  a backoff of retry_backoff_s * 2^(n-1) s (capped), up to train.max_restarts times; then
  it FAILED (`retry`). Deterministic failures (bad input, exit code 2) are FAILED at once.
- The attempt number is the fencing token. Every placement starts the next attempt, and
  reports, finishes and releases of any other attempt are refused (`owned_job`:
  FAILED_PRECONDITION): a worker that was cut off and comes back cannot overwrite the new
  attempt's work, and at most one attempt of a job is ever ASSIGNED or RUNNING (the job
  row has one worker).
- The next attempt resumes from the newest complete checkpoint because every attempt
  writes to the same output folder (output.dir, else the worker's artifacts_root/JOB_ID,
  which must be storage shared by all workers).
- A multi-node job lives and dies as one (its members share the attempt): when any member
  is lost, released or fails, the gang is requeued, retried or failed as above, and the
  other members' heartbeats tell them to kill their training processes (lost_job_ids).
- A job whose source job (model.source: job) FAILED or was CANCELLED fails with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tunefleet.coordinator import gang
from tunefleet.coordinator.errors import FailedPrecondition, NotFound
from tunefleet.coordinator.event_bus import EventBus
from tunefleet.coordinator.store import JobStore, WorkerRecord
from tunefleet.states import state_name
from tunefleet.v1 import job_pb2, spec_pb2

# The control plane logs under one name, whichever of its modules writes the line: operators
# filter the coordinator's JSON logs on it.
log = logging.getLogger("tunefleet.coordinator.scheduler")

# Requeues that are not crashes (a lost, restarted or draining worker, a released job) do
# not count against train.max_restarts, but they are bounded too: a job that keeps
# losing its workers (say, it makes each of them run out of disk or memory) fails after
# this many instead of cycling through the fleet forever.
MAX_REQUEUES = 20

DEFAULT_FINISH_REASONS = {
    job_pb2.SUCCEEDED: "finished on worker {worker}",
    job_pb2.FAILED: "failed on worker {worker}",
    job_pb2.CANCELLED: "cancelled by user",
}


class JobLifecycle:
    """Transitions of jobs after submit; call every method with the Scheduler's lock held."""

    def __init__(
        self,
        store: JobStore,
        bus: EventBus,
        *,
        clock: Callable[[], float],
        on_change: Callable[[], None],
        retry_backoff_s: float,
        retry_backoff_max_s: float,
        max_requeues: int,
    ):
        self.store = store
        self.bus = bus
        self._clock = clock
        self._on_change = on_change
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.max_requeues = max_requeues
        # Sweeps (coordinator/sweeps.py), set by the Scheduler: a trial's end is told to its
        # sweep, and a pruned trial ends PRUNED rather than CANCELLED.
        self.sweeps = None

    def get_job(self, job_id: str) -> job_pb2.Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    def owned_job(self, worker_id: str, job_id: str, attempt: int) -> job_pb2.Job:
        """The job, if `attempt` on `worker_id` (its worker, or a member of the gang) is its
        current, unfinished placement; else FAILED_PRECONDITION (the fence)."""
        return self.check_owned(self.get_job(job_id), worker_id, attempt)

    def check_owned(self, job: job_pb2.Job, worker_id: str, attempt: int) -> job_pb2.Job:
        """owned_job for a job the caller read under this same lock (no second read)."""
        job_id = job.id
        if (
            (job.worker_id != worker_id and gang.member_of(job, worker_id) is None)
            or job.attempt != attempt
            or job.state not in (job_pb2.ASSIGNED, job_pb2.RUNNING)
        ):
            raise FailedPrecondition(
                f"job {job_id} attempt {attempt} does not belong to worker {worker_id} "
                f"(job is {state_name(job.state)}, attempt {job.attempt}"
                f"{', on worker ' + job.worker_id if job.worker_id else ''})"
            )
        return job

    def assign(
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
        return job

    def started(self, job_id: str, where: str, now: float) -> tuple[job_pb2.Job, job_pb2.Event]:
        """ASSIGNED -> RUNNING on the attempt's first report. Publishes nothing: it is part
        of a group commit, whose events followers hear of once the commit is durable."""
        return self.store.transition(
            job_id, job_pb2.RUNNING, f"training started on {where}", started_at=now, now=now
        )

    def request_cancel(self, job: job_pb2.Job, reason: str) -> None:
        """A placed job is flagged; its worker's next heartbeat tells it to stop the job."""
        now = self._clock()
        self.store.update_job(job.id, cancel_requested=True, now=now)
        note = job_pb2.Event(
            log=job_pb2.LogLine(level="info", message=f"cancellation requested: {reason}")
        )
        (event,) = self.store.append_events(job.id, job.attempt, [note], now=now)
        self.bus.publish(job.id, event.seq)

    def finish(self, job: job_pb2.Job, state: int, reason: str, **fields) -> None:
        now = self._clock()
        if self.sweeps is not None:
            state, reason = self.sweeps.job_finishing(job, state, reason)
        if job.members and state != job_pb2.SUCCEEDED:
            # Members that succeed along with rank 0 say so themselves.
            fields["end_members"] = (job_pb2.CANCELLED, f"stopped with the gang: {reason}")
        try:
            # The job's end and what it sets off in its sweep (the tell, the next trials'
            # jobs) in one commit: one disk flush per finished trial, not two.
            with self.store.atomic():
                job, event = self.store.transition(
                    job.id, state, reason, finished_at=now, now=now, **fields
                )
                if self.sweeps is not None:
                    self.sweeps.job_finished(job)
        except BaseException:
            if self.sweeps is not None:  # they were told what was not stored
                self.sweeps.forget_studies()
            raise
        self.bus.publish(job.id, event.seq)
        log.info("job %s %s: %s", job.id, state_name(state), reason)
        self.fail_dependents_of(job)
        self._on_change()

    def finish_member(
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
            self.retry(job, reason)
        elif action == gang.FINISH:
            self.finish(job, state, reason, artifacts=artifacts or {}, summary=summary or {})
        elif action == gang.RELEASE:
            self.release(job, reason)

    def release(self, job: job_pb2.Job, reason: str, *, detail: str = "") -> None:
        """Queues again a job whose worker went away or gave it back; not a restart."""
        if job.cancel_requested:
            self.finish(job, job_pb2.CANCELLED, f"cancelled by user ({reason} before it stopped)")
            return
        requeues = job.attempt - job.restarts  # placements that ended without a crash
        if requeues > self.max_requeues:
            self.finish(
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

    def release_if_silent(
        self, job: job_pb2.Job, worker_id: str, now: float, lease_timeout_s: float
    ) -> None:
        """Requeues a job that `worker_id` holds but did not list in its heartbeat, once it
        has been quiet for a lease: an assignment whose AcquireJob response never reached
        the worker, or a job the worker dropped without a word (it lists a job until it has
        told us how the job ended). The lease keeps a fresh assignment or a late report from
        being mistaken for one. A member of a multi-node job is judged by its own part
        (other members' reports do not vouch for it)."""
        member = gang.member_of(job, worker_id)
        since = member.updated_at if member is not None else job.updated_at
        if now - since.ToNanoseconds() / 1e9 <= lease_timeout_s:
            return
        if job.state == job_pb2.ASSIGNED or (
            member is not None and member.state == job_pb2.ASSIGNED
        ):
            self.release(job, f"worker {worker_id} never started the job")
        else:
            self.release(job, f"worker {worker_id} no longer runs the job")

    def retry(self, job: job_pb2.Job, reason: str) -> None:
        """A crashed training process: queue again after a backoff, or give up."""
        limit = job.spec.train.max_restarts
        if job.restarts >= limit:
            self.finish(
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
        self._on_change()

    def fail_dependents_of(self, source: job_pb2.Job) -> None:
        if source.state not in (job_pb2.FAILED, job_pb2.CANCELLED):
            return
        for job in self.store.dependents(source.id):
            # finish recurses into the dependents of `job` in turn.
            what = "sweep" if source.id.startswith("sweep-") else "job"
            self.finish(
                job, job_pb2.FAILED, f"source {what} {source.id} ended {state_name(source.state)}"
            )

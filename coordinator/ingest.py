"""ReportIngest: workers' event reports (ReportEvents) into the store, by group commit.

Reports arrive from many workers at once, and each commit costs a disk flush
(synchronous=FULL). So a report joins a queue, and whoever takes the Scheduler's lock next
stores every queued report in one transaction: one flush for all the reports that queued
while the previous commit ran. Each report is still atomic on its own (a savepoint of the
commit) and fails alone. Followers hear of the events only once they are durable.

The commit runs under the Scheduler's lock (it is handed in) because a report is checked
against the job's current attempt (the fence, JobLifecycle.owned_job) and may move the job
ASSIGNED -> RUNNING: the check and the writes must not interleave with a requeue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from tunefleet import limits
from tunefleet.coordinator import gang
from tunefleet.coordinator.errors import InvalidArgument
from tunefleet.coordinator.lifecycle import JobLifecycle
from tunefleet.states import is_terminal
from tunefleet.v1 import job_pb2

log = logging.getLogger("tunefleet.coordinator.scheduler")  # see lifecycle.py

# (job id, last seq stored, the events stored): what to publish once the commit is durable.
_Published = list[tuple[str, int, list[job_pb2.Event]]]


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


class Reported(NamedTuple):
    """How a report ended: the job's last event seq, and whether its worker must stop it
    now (cancelled or pruned; ReportEventsResponse.stop)."""

    last_seq: int
    stop: bool


def check_events(events: Iterable[job_pb2.Event]) -> list[job_pb2.Event]:
    """The events a worker may report: bounded in size, each a log line, metrics or a
    report (state changes are the coordinator's). Raises InvalidArgument."""
    events = list(events)
    for i, event in enumerate(events):
        if event.ByteSize() > limits.MAX_EVENT_TEXT_BYTES:  # workers bound them; so do we
            limits.bound_event(event)
        kind = event.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument(f"events[{i}] has no kind (log, metrics or report)")
        if kind == "state_change":
            raise InvalidArgument(
                f"events[{i}]: state changes are made by the coordinator; end a job with FinishJob"
            )
    return events


class ReportIngest:
    def __init__(
        self, lifecycle: JobLifecycle, lock: threading.RLock, *, clock: Callable[[], float]
    ):
        self._lifecycle = lifecycle
        self.store = lifecycle.store
        self.bus = lifecycle.bus
        self._lock = lock  # the Scheduler's
        self._clock = clock
        self._queue_lock = threading.Lock()
        self._queue: list[_Report] = []
        # Called (lock held) with each job's newly stored events: sweeps feed their pruners.
        self.on_stored: Callable[[str, list[job_pb2.Event]], None] | None = None

    def report(
        self,
        worker_id: str,
        job_id: str,
        attempt: int,
        events: Iterable[job_pb2.Event],
        batch_seq: int = 0,
    ) -> Reported:
        """Stores a worker's events for its current attempt (see Scheduler.report)."""
        ticket = _Report(worker_id, job_id, attempt, check_events(events), batch_seq)
        with self._queue_lock:
            self._queue.append(ticket)
        with self._lock:
            if not ticket.done:  # else an earlier lock holder stored it with its own
                self._commit()
            # After the commit and its on_stored (under this lock, whoever committed): a
            # pruner that stopped the job on these metrics has marked it by now.
            stop = ticket.error is None and self._stop_requested(ticket)
        if ticket.error is not None:
            raise ticket.error
        return Reported(ticket.last_seq, stop)

    def _stop_requested(self, ticket: _Report) -> bool:
        job = self.store.get_job(ticket.job_id)
        return (
            job is not None
            and job.cancel_requested
            and not is_terminal(job.state)
            and job.attempt == ticket.attempt
        )

    def _commit(self) -> None:
        """Stores every queued report in one transaction (call with the lock held)."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        published: _Published = []
        try:
            with self.store.atomic():
                for ticket in batch:
                    mark = len(published)
                    try:
                        with self.store.atomic():
                            ticket.last_seq = self._store(ticket, published)
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
        if self.on_stored is not None:
            for job_id, _, events in published:
                if events:
                    self.on_stored(job_id, events)

    def _store(self, ticket: _Report, published: _Published) -> int:
        """One report, inside the commit. Of a multi-node job's other members (rank > 0)
        only log lines are kept: rank 0 runs the global main process, the one source of
        metrics and reports, and each member's batch_seq counts on its own, so theirs are
        not deduplicated (a retried batch of log lines may show twice)."""
        worker_id, job_id, attempt = ticket.worker_id, ticket.job_id, ticket.attempt
        events, batch_seq = ticket.events, ticket.batch_seq
        job = self._lifecycle.owned_job(worker_id, job_id, attempt)
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
            job, event = self._lifecycle.started(job_id, where, now)
            published.append((job_id, event.seq, []))
        stored, duplicate = self.store.append_report(job_id, attempt, batch_seq, events, now=now)
        if duplicate:
            log.info("job %s: batch %d of attempt %d was stored before", job_id, batch_seq, attempt)
        last_seq = stored[-1].seq if stored else job.last_seq
        published.append((job_id, last_seq, stored))
        return last_seq

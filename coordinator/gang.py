"""Multi-node jobs: who holds a job, what a worker has left, and choosing a gang.

A job with resources.nodes = N > 1 runs on N workers at once, one machine rank each
(Job.members, rank 0 first; Job.worker_id is rank 0's). The Scheduler places all N
members in one step or none of them: a partial allocation would hold workers idle while
waiting for the rest, and two big jobs each holding part of what both need would wait for
each other forever.

The gang is placed by the AcquireJob of a worker it fits, which becomes machine rank 0
(its address and the port its poll offered are the rendezvous), together with N-1 other
workers that are waiting in AcquireJob at that moment (WaitingWorkers): a worker busy with
a job would take its part only after that job, while the others wait at the rendezvous.
Their own long polls return their parts at once.

How it ends: rank 0 runs the global main process (the one that writes events, checkpoints
and the model), so its FinishJob decides; the others' are recorded on Job.members, and end
the job only by failing or quitting before rank 0 is done (end_action).

Everything here works on the jobs and workers it is given; the Scheduler reads them under
its lock and writes the outcome. Choosing the members is placement's (placement.py:
choose_members); who may join is WaitingWorkers' below.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tunefleet.states import ACTIVE_STATES
from tunefleet.v1 import coordinator_pb2, job_pb2


def nodes(job: job_pb2.Job) -> int:
    return max(job.spec.resources.nodes, 1)


def is_gang(job: job_pb2.Job) -> bool:
    return job.spec.resources.nodes > 1


def holders(job: job_pb2.Job) -> list[str]:
    """The workers whose capacity an active job takes: its worker, or the members of a
    multi-node job that still run their part (one that finished early is free again)."""
    if job.members:
        return [m.worker_id for m in job.members if m.state in ACTIVE_STATES]
    return [job.worker_id] if job.worker_id else []


def by_holder(jobs: Iterable[job_pb2.Job]) -> dict[str, list[job_pb2.Job]]:
    held: dict[str, list[job_pb2.Job]] = {}
    for job in jobs:
        for worker_id in holders(job):
            held.setdefault(worker_id, []).append(job)
    return held


def member_of(
    job: job_pb2.Job, worker_id: str, attempt: int | None = None
) -> job_pb2.JobMember | None:
    """The worker's part in the job's latest placement (if that is `attempt`, when given),
    if the job is multi-node."""
    if attempt is not None and attempt != job.attempt:
        return None
    for member in job.members:
        if member.worker_id == worker_id:
            return member
    return None


def describe(job: job_pb2.Job) -> str:
    """'worker w1' or 'workers w1 (rank 0), w2 (rank 1)', for reasons and notes."""
    if not job.members:
        return f"worker {job.worker_id}"
    return "workers " + ", ".join(f"{m.worker_id} (rank {m.rank})" for m in job.members)


class WaitingWorkers:
    """The workers waiting in AcquireJob right now, with the rendezvous port each call
    offered, and the parts of multi-node jobs placed for them by another worker's poll until
    their own poll takes them. Not thread-safe: the Scheduler's lock guards it."""

    def __init__(self) -> None:
        self._ports: dict[str, list[int]] = {}
        self._handed: dict[str, tuple[str, int]] = {}  # worker id -> (job id, attempt)

    @contextmanager
    def polling(self, worker_id: str, port: int) -> Iterator[None]:
        self._ports.setdefault(worker_id, []).append(port)
        try:
            yield
        finally:
            ports = self._ports[worker_id]
            ports.remove(port)
            if not ports:
                del self._ports[worker_id]

    def pool_ids(self, first: str) -> list[str]:
        """Besides `first` (rank 0), the workers a gang can take now, in id order: waiting
        (so they start their part at once, not after the job they run), able to run
        multi-node jobs (their polls offer a rendezvous port), not yet handed a part."""
        return sorted(
            w
            for w, ports in self._ports.items()
            if w != first and any(ports) and w not in self._handed
        )

    def hand(self, worker_id: str, job_id: str, attempt: int) -> None:
        self._handed[worker_id] = (job_id, attempt)

    def take(self, worker_id: str) -> tuple[str, int] | None:
        """(job id, attempt) of the part handed to this worker, if any (once)."""
        return self._handed.pop(worker_id, None)


# What a member's FinishJob does to its job (end_action); None: it is only recorded.
FINISH, RETRY, RELEASE = "finish", "retry", "release"


def end_action(
    job: job_pb2.Job, member: job_pb2.JobMember, state: int, retryable: bool
) -> str | None:
    """What one member's end does to the job: only while the gang runs, rank 0 ends it as a
    single-node worker would (FINISH, or RETRY a crash); another member ends it by failing,
    since the gang cannot go on without it (RETRY or FINISH as FAILED), or by stopping its
    part unasked (RELEASE: run the gang again). One that succeeded before rank 0, or ended
    while a cancel is under way, leaves the outcome to rank 0."""
    if job.state not in ACTIVE_STATES:
        return None  # the gang ended already (a retry, or a late report)
    crashed = state == job_pb2.FAILED and retryable and not job.cancel_requested
    if member.rank == 0:
        return RETRY if crashed else FINISH
    if state == job_pb2.SUCCEEDED or job.cancel_requested:
        return None
    if state == job_pb2.FAILED:
        return RETRY if crashed else FINISH
    return RELEASE


def finishing(job: job_pb2.Job, worker_id: str, now: float, grace_s: float) -> bool:
    """True for a member that still runs its part of a job that just SUCCEEDED (within
    grace_s): it is most likely exiting too (the launchers of a job leave together), so it
    has that long to say how its part ended before it is told to kill its processes."""
    member = member_of(job, worker_id)
    return (
        job.state == job_pb2.SUCCEEDED
        and member is not None
        and member.state in ACTIVE_STATES
        and now - job.finished_at.ToNanoseconds() / 1e9 <= grace_s
    )


def endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def assignment(job: job_pb2.Job, worker_id: str) -> coordinator_pb2.Assignment:
    """The Assignment AcquireJob hands `worker_id`: with its machine rank and the gang's
    rendezvous when the job is multi-node."""
    placed = coordinator_pb2.Assignment(job=job, attempt=job.attempt)
    member = member_of(job, worker_id)
    if member is not None:
        host, _, port = job.rendezvous.rpartition(":")
        placed.rendezvous.CopyFrom(
            coordinator_pb2.Rendezvous(
                machine_rank=member.rank,
                num_machines=len(job.members),
                main_process_ip=host.strip("[]"),
                main_process_port=int(port),
            )
        )
    return placed

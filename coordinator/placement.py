"""Placement: which queued job a worker takes, and why the others wait. Pure functions
over the jobs and workers they are given: no lock, no store, no clock of their own. The
Scheduler reads the queue and the fleet under its lock, calls these, and writes what they
decide (tests can call them with hand-made jobs and workers).

The model (deliberately simple for now):
- A job needs `resources.gpus` GPUs of one worker. A GPU worker takes jobs while its free
  GPUs cover them.
- A CPU-only job (gpus == 0) uses the worker's CPUs flat out, so each worker runs at most
  one CPU-only job at a time.
- Queued jobs are offered in order (`fair_order`): priority desc; of equal priority, the
  jobs of the submitter with the fewest jobs placed now first; then oldest first. A worker
  takes the first one that fits it. So one user's backlog (a sweep's queued trials, a
  burst of submits) does not make another user's job wait behind all of it: fair share of
  the fleet by jobs placed, not first come first served. A job too big for every worker
  therefore waits without blocking smaller jobs behind it (it could starve under a steady
  stream of small jobs; reserving capacity for it is a later concern).
- A job in a retry backoff (not_before) is not placed until the backoff ends.
- A job whose model comes from another job (`model.source: job`) waits until that job
  SUCCEEDED and takes its `artifacts["model"]` as `model.name` when it is assigned.
- A multi-node job (resources.nodes = N > 1) gets N distinct workers that each fit it, all
  at once or none (gang scheduling: how and why in coordinator/gang.py). Like any job too
  big for the free workers, one that does not fit now does not block smaller jobs behind
  it (backfill): they keep the fleet busy, at the risk of starving it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunefleet.coordinator import gang
from tunefleet.states import state_name
from tunefleet.v1 import coordinator_pb2, job_pb2, spec_pb2

if TYPE_CHECKING:  # records the caller read from the store; placement never reads it
    from tunefleet.coordinator.store import WorkerRecord

# (GPUs, source job id, nodes) of a queued job: what explaining its wait looks at.
Need = tuple[int, str, int]


class Capacity:
    """What a worker has left, given the active jobs it holds.

    A GPU job takes resources.gpus of each worker it runs on. A CPU-only job (gpus == 0)
    uses the worker's CPUs flat out, so a worker runs at most one CPU-only job at a time.
    """

    def __init__(self, worker: WorkerRecord, active: Iterable[job_pb2.Job]):
        mine = [j for j in active if worker.id in gang.holders(j)]
        self.job_ids = [j.id for j in mine]
        self.gpus = worker.resources.gpus
        self.free_gpus = worker.resources.gpus - sum(j.spec.resources.gpus for j in mine)
        self.cpu_busy = any(j.spec.resources.gpus == 0 for j in mine)

    def fits(self, job: job_pb2.Job) -> bool:
        need = job.spec.resources.gpus
        return self.free_gpus >= need if need > 0 else not self.cpu_busy


def worker_view(
    record: WorkerRecord, active: Iterable[job_pb2.Job], *, now: float, unhealthy_reason: str
) -> coordinator_pb2.Worker:
    """The Worker message ListWorkers and DrainWorker return: the record and what it has
    left."""
    capacity = Capacity(record, active)
    return coordinator_pb2.Worker(
        id=record.id,
        hostname=record.hostname,
        resources=record.resources,
        state=record.state,
        free_gpus=max(capacity.free_gpus, 0),
        job_ids=capacity.job_ids,
        last_heartbeat_age_s=max(now - record.last_heartbeat, 0.0),
        address=record.address,
        unhealthy_reason=unhealthy_reason,
    )


def choose_members(
    job: job_pb2.Job, first: WorkerRecord, others: list[tuple[WorkerRecord, Capacity]]
) -> list[WorkerRecord] | None:
    """`first` (rank 0) plus the first nodes-1 of `others` that fit the job, or None when
    too few do: then nobody gets any part of it."""
    picks = [worker for worker, capacity in others if capacity.fits(job)][: gang.nodes(job) - 1]
    return [first, *picks] if len(picks) == gang.nodes(job) - 1 else None


@dataclass(frozen=True)
class Placement:
    """A queued job `first_fit` found for a worker."""

    job: job_pb2.Job
    members: list[WorkerRecord]  # the workers that run it, machine rank 0 (the asker) first
    spec: spec_pb2.JobSpec | None = None  # the spec to run, when not the job's own
    refusal: str = ""  # set: the job can never run (fail it with this reason)


def fair_order(
    queues: Iterable[Iterable[job_pb2.Job]], placed: dict[str, int]
) -> Iterator[job_pb2.Job]:
    """The submitters' queues (each one submitter's QUEUED jobs, higher priority first,
    then the oldest) merged into placement order: higher priority first; of equal
    priority, the jobs of whoever has the fewest jobs placed now (`placed`, by submitter),
    then the oldest.

    Lazy: it reads the head of each queue, then only as far as the caller takes; so the
    first fit of a long queue costs one job per submitter, not the whole queue."""

    def key(job: job_pb2.Job) -> tuple[int, int, int]:
        return -job.spec.priority, placed.get(job.submitter, 0), job.created_at.ToNanoseconds()

    return heapq.merge(*queues, key=key)


def first_fit(
    queued: Iterable[job_pb2.Job],
    worker: WorkerRecord,
    capacity: Capacity,
    *,
    now: float,
    rendezvous_port: int,
    gang_pool: Callable[[], list[tuple[WorkerRecord, Capacity]]],
    source_job: Callable[[str], job_pb2.Job | None],
) -> Iterator[Placement]:
    """The jobs of `queued` (in placement order) that `worker` can take now, as Placements;
    the caller assigns the first one that has no refusal and stops.

    `gang_pool` returns the other workers a multi-node job could take with it (called at
    most once, and only if such a job fits: it reads the fleet); `source_job` looks up the
    job a model comes from. A multi-node job needs `rendezvous_port` and the worker's
    address: rank 0 hosts the rendezvous there."""
    pool = None
    for job in queued:
        if not capacity.fits(job) or job.not_before.ToNanoseconds() / 1e9 > now:
            continue
        members = [worker]
        if gang.is_gang(job):
            if not rendezvous_port or not worker.address:
                continue  # this worker cannot host the rendezvous
            if pool is None:
                pool = gang_pool()
            members = choose_members(job, worker, pool)
            if members is None:
                continue  # not enough workers free at once: smaller jobs go first
        spec = None
        if job.spec.model.source == "job":
            source = source_job(job.spec.model.job)
            if source is None or source.state != job_pb2.SUCCEEDED:
                continue
            # The uploaded copy when the source's worker had --artifacts-uri: any worker can
            # fetch it (its input cache); else the local folder (same worker, shared disk).
            model = source.artifacts.get("model_uri") or source.artifacts.get("model")
            if not model:
                yield Placement(job, members, refusal=f"source job {source.id} has no model")
                continue
            spec = spec_pb2.JobSpec()
            spec.CopyFrom(job.spec)
            spec.model.name = model
        yield Placement(job, members, spec)


def need(spec: bytes) -> Need:
    """(GPUs, source job id, nodes) of a serialized spec."""
    parsed = spec_pb2.JobSpec.FromString(spec)
    source = parsed.model.job if parsed.model.source == "job" else ""
    return parsed.resources.gpus, source, max(parsed.resources.nodes, 1)


def explain_waits(
    queued: list[tuple[str, str, bytes, float]],
    capacities: list[Capacity],
    *,
    now: float,
    source_job: Callable[[str], job_pb2.Job | None],
    known_needs: dict[str, Need],
) -> tuple[dict[str, str], dict[str, Need]]:
    """Why each queued job waits: (the reasons that changed, by job id; the needs of the
    queued jobs, to pass back as `known_needs` next time and save decoding their specs).

    `queued` is the store's queued_brief (id, current reason, spec, not_before) and
    `capacities` those of the workers that may take jobs now. A job in a retry backoff
    keeps its reason (it says when the restart is due); one that could run now keeps
    whatever it said last (a worker's poll will take it)."""
    most_free_gpus = max((c.free_gpus for c in capacities), default=0)
    most_gpus = max((c.gpus for c in capacities), default=0)
    cpu_slot_free = any(not c.cpu_busy for c in capacities)
    fitting: dict[int, int] = {}  # GPUs -> how many workers could take that much now
    reasons: dict[str, str] = {}
    needs: dict[str, Need] = {}
    for job_id, current, spec, not_before in queued:
        gpus, source, nodes = needs[job_id] = known_needs.get(job_id) or need(spec)
        if nodes > 1 and gpus not in fitting:
            fitting[gpus] = sum(
                c.free_gpus >= gpus if gpus > 0 else not c.cpu_busy for c in capacities
            )
        if not_before > now:
            continue  # its reason says when its restart is due
        source_state = source_job(source) if source else None
        if source_state is not None and source_state.state != job_pb2.SUCCEEDED:
            if source.startswith("sweep-"):  # a sweep's stand-in (Sweeps.as_source)
                reason = f"waiting for source sweep {source} to end and pick its best trial"
            else:
                reason = (
                    f"waiting for source job {source} to succeed "
                    f"(it is {state_name(source_state.state)})"
                )
        elif nodes > 1 and fitting[gpus] < nodes:
            what = f"{gpus} free GPUs each" if gpus > 0 else "a free CPU slot"
            reason = f"waiting for {nodes} workers with {what} at once ({fitting[gpus]} now)"
        elif nodes > 1:
            continue
        elif gpus > 0 and gpus > most_free_gpus:
            reason = f"waiting for a worker with {gpus} free GPUs"
            if gpus > most_gpus:  # waiting alone will not do: a CPU-only fleet, say
                reason += f"; no live worker has that many (the most: {most_gpus})"
        elif gpus == 0 and not cpu_slot_free:
            reason = "waiting for a free worker"
        else:
            continue
        if reason != current:
            reasons[job_id] = reason
    return reasons, needs

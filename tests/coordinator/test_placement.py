"""Placement on its own: pure functions over hand-made jobs and workers (no server, no
store), for the rules the end-to-end tests in this folder exercise through gRPC."""

from __future__ import annotations

from coordinator_helpers import make_spec

from tunefleet.coordinator import placement
from tunefleet.coordinator.placement import Capacity
from tunefleet.coordinator.store import WorkerRecord
from tunefleet.v1 import coordinator_pb2, job_pb2


def _worker(worker_id: str, gpus: int = 0, address: str = "10.0.0.1") -> WorkerRecord:
    return WorkerRecord(
        id=worker_id,
        hostname=worker_id,
        resources=coordinator_pb2.WorkerResources(gpus=gpus),
        state=coordinator_pb2.LIVE,
        last_heartbeat=0.0,
        address=address,
    )


def _job(job_id: str, *, gpus: int = 0, nodes: int = 1, worker: str = "", **spec) -> job_pb2.Job:
    job = job_pb2.Job(id=job_id, spec=make_spec(job_id, gpus=gpus, **spec), worker_id=worker)
    job.spec.resources.nodes = nodes
    if worker:
        job.state = job_pb2.RUNNING
    return job


def _first(queued, worker, active=(), **options) -> placement.Placement | None:
    options.setdefault("now", 100.0)
    options.setdefault("rendezvous_port", 0)
    options.setdefault("gang_pool", lambda: [])
    options.setdefault("source_job", lambda job_id: None)
    found = placement.first_fit(queued, worker, Capacity(worker, active), **options)
    return next(iter(found), None)


def test_capacity_counts_gpus_and_one_cpu_job_per_worker():
    worker = _worker("w", gpus=4)
    capacity = Capacity(worker, [_job("a", gpus=3, worker="w"), _job("b", gpus=0, worker="x")])
    assert (capacity.free_gpus, capacity.cpu_busy, capacity.job_ids) == (1, False, ["a"])
    assert capacity.fits(_job("c", gpus=1)) and not capacity.fits(_job("d", gpus=2))
    busy = Capacity(worker, [_job("e", gpus=0, worker="w")])
    assert busy.cpu_busy and not busy.fits(_job("f", gpus=0)) and busy.fits(_job("g", gpus=4))


def test_first_fit_skips_what_does_not_fit_and_what_backs_off():
    worker = _worker("w", gpus=2)
    backing_off = _job("late", gpus=1)
    backing_off.not_before.FromSeconds(200)
    queued = [_job("big", gpus=8), backing_off, _job("fits", gpus=2)]
    assert _first(queued, worker).job.id == "fits"
    assert _first(queued, worker, now=300.0).job.id == "late"


def test_a_gang_takes_all_its_members_at_once_or_waits():
    gang_job = _job("gang", nodes=3)
    first, others = _worker("w0"), [_worker("w1"), _worker("w2")]
    pool = [(w, Capacity(w, ())) for w in others]
    placed = _first([gang_job], first, rendezvous_port=29500, gang_pool=lambda: pool)
    assert [w.id for w in placed.members] == ["w0", "w1", "w2"]
    # One member short: nobody gets a part; without a port the asker cannot be rank 0.
    assert _first([gang_job], first, rendezvous_port=29500, gang_pool=lambda: pool[:1]) is None
    assert _first([gang_job], first, gang_pool=lambda: pool) is None


def test_a_model_from_another_job_waits_for_it_and_takes_its_model():
    queued = [_job("child", source_job="parent")]
    parent = _job("parent")
    parent.state = job_pb2.RUNNING
    assert _first(queued, _worker("w"), source_job=lambda _: parent) is None
    parent.state = job_pb2.SUCCEEDED
    refused = _first(queued, _worker("w"), source_job=lambda _: parent)
    assert refused.refusal == "source job parent has no model"
    parent.artifacts["model"] = "/out/parent/model"
    placed = _first(queued, _worker("w"), source_job=lambda _: parent)
    assert not placed.refusal and placed.spec.model.name == "/out/parent/model"


def test_fair_order_puts_whoever_has_fewest_jobs_placed_first_within_a_priority():
    def queued(job_id: str, submitter: str, created_s: int, priority: int = 0) -> job_pb2.Job:
        job = _job(job_id, priority=priority)
        job.submitter = submitter
        job.created_at.FromSeconds(created_s)
        return job

    # alice's sweep queued its trials (and an urgent job) before bob's jobs came.
    alice = [queued("urgent", "alice", 5, priority=5)] + [
        queued(f"t{i}", "alice", i) for i in range(3)
    ]
    bob = [queued("b1", "bob", 11), queued("b2", "bob", 12)]

    def order(placed: dict[str, int]) -> list[str]:
        return [job.id for job in placement.fair_order([alice, bob], placed)]

    assert order({"alice": 3, "bob": 1}) == ["urgent", "b1", "b2", "t0", "t1", "t2"]
    # Equal shares: the oldest first, whoever submitted it.
    assert order({"alice": 1, "bob": 1}) == ["urgent", "t0", "t1", "t2", "b1", "b2"]
    # Lazy: the first job to place costs one job of each queue, not a whole backlog.
    read = []
    backlog = (read.append(job.id) or job for job in alice[1:])
    assert next(placement.fair_order([backlog, bob], {"alice": 2})).id == "b1"
    assert read == ["t0"]


def test_explain_waits_says_what_each_job_waits_for():
    capacities = [Capacity(_worker("w", gpus=2), [_job("run", gpus=0, worker="w")])]
    queued = [
        (job.id, "submitted", job.spec.SerializeToString(), 0.0)
        for job in (
            _job("big", gpus=4),
            _job("cpu", gpus=0),
            _job("gang", gpus=1, nodes=2),
            _job("fits", gpus=1),
        )
    ]
    reasons, needs = placement.explain_waits(
        queued, capacities, now=0.0, source_job=lambda _: None, known_needs={}
    )
    assert reasons == {
        "big": "waiting for a worker with 4 free GPUs; no live worker has that many (the most: 2)",
        "cpu": "waiting for a free worker",
        "gang": "waiting for 2 workers with 1 free GPUs each at once (1 now)",
    }
    assert needs["gang"] == (1, "", 2)

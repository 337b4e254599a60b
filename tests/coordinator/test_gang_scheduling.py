"""Multi-node jobs: gang placement, ranks and rendezvous, and the gang living and dying as
one, against a real coordinator over gRPC (the workers' side driven step by step)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from coordinator_helpers import (
    RPC_TIMEOUT,
    Client,
    Worker,
    log_event,
    make_spec,
    metric_steps,
    state_changes,
    train_metrics,
    wait_for,
)

from tunefleet.v1 import coordinator_pb2, job_pb2


class GangWorker(Worker):
    """A worker that can run multi-node jobs: it registers an address and offers a port
    with each poll, as WorkerDaemon does."""

    def __init__(self, stub, worker_id: str, address: str, port: int, gpus: int = 0):
        self.address, self.port = address, port
        super().__init__(stub, worker_id, gpus)

    def register(self):
        request = coordinator_pb2.RegisterWorkerRequest(
            worker_id=self.worker_id,
            hostname="test-host",
            resources=coordinator_pb2.WorkerResources(gpus=self.gpus, cpus=2),
            address=self.address,
        )
        return self.stub.RegisterWorker(request, timeout=RPC_TIMEOUT)

    def acquire(self, wait: float = 0.2) -> coordinator_pb2.Assignment | None:
        request = coordinator_pb2.AcquireJobRequest(
            worker_id=self.worker_id, wait_seconds=wait, rendezvous_port=self.port
        )
        response = self.stub.AcquireJob(request, timeout=wait + RPC_TIMEOUT)
        return response.assignment if response.HasField("assignment") else None


def gang_spec(name: str = "gang", *, nodes: int = 2, gpus: int = 0, priority: int = 0):
    spec = make_spec(name, gpus=gpus, priority=priority)
    spec.resources.nodes = nodes
    spec.resources.processes = 1
    return spec


def workers(client: Client, count: int, gpus: int = 0) -> list[GangWorker]:
    return [
        GangWorker(client.stub, f"w{i}", f"10.0.0.{i}", 40000 + i, gpus)
        for i in range(1, count + 1)
    ]


def poll_together(members: list[GangWorker], wait: float = 1.5) -> dict[str, object]:
    """Every worker long-polls at once, as idle daemons do; worker id -> its assignment."""
    with ThreadPoolExecutor(len(members)) as pool:
        futures = {w.worker_id: pool.submit(w.acquire, wait) for w in members}
        return {worker_id: f.result() for worker_id, f in futures.items()}


def place(client: Client, members: list[GangWorker], job_id: str):
    """Polls until `job_id` is placed; returns {worker id: Assignment} of its members."""
    got = {}
    for worker_id, assignment in poll_together(members).items():
        if assignment is not None:
            assert assignment.job.id == job_id
            got[worker_id] = assignment
    return got


def member_states(job: job_pb2.Job) -> dict[str, str]:
    return {m.worker_id: job_pb2.JobState.Name(m.state) for m in job.members}


def test_a_gang_waits_for_enough_workers_then_gets_all_of_them_at_once(client):
    (w1,) = workers(client, 1)
    job = client.submit(gang_spec())

    assert w1.acquire(wait=0.3) is None, "one worker is not enough for a 2-node job"
    waiting = client.get(job.id)
    assert waiting.state == job_pb2.QUEUED and not waiting.members
    assert waiting.reason == "waiting for 2 workers with a free CPU slot at once (1 now)"

    w2 = GangWorker(client.stub, "w2", "10.0.0.2", 40002)  # the second worker registers
    parts = poll_together([w1, w2])

    assert set(parts) == {"w1", "w2"} and {a.job.id for a in parts.values()} == {job.id}
    assert {a.attempt for a in parts.values()} == {1}
    ranks = {w: a.rendezvous.machine_rank for w, a in parts.items()}
    assert sorted(ranks.values()) == [0, 1]
    main = next(w for w, rank in ranks.items() if rank == 0)  # the poll that placed it
    other = "w2" if main == "w1" else "w1"
    host, port = {"w1": ("10.0.0.1", 40001), "w2": ("10.0.0.2", 40002)}[main]
    for assignment in parts.values():
        r = assignment.rendezvous
        assert (r.num_machines, r.main_process_ip, r.main_process_port) == (2, host, port)
    placed = client.get(job.id)
    assert placed.state == job_pb2.ASSIGNED and placed.worker_id == main
    assert [(m.rank, m.worker_id) for m in placed.members] == [(0, main), (1, other)]
    assert placed.members[0].address == host and placed.rendezvous == f"{host}:{port}"
    assert {w: list(info.job_ids) for w, info in client.workers().items()} == {
        "w1": [job.id],
        "w2": [job.id],
    }
    assert state_changes(client.events(job.id))[1] == (
        "ASSIGNED",
        f"assigned to workers {main} (rank 0), {other} (rank 1)",
    )


def test_rank_0_decides_the_outcome_and_the_others_are_recorded(client):
    w1, w2 = workers(client, 2)
    job = client.submit(gang_spec())
    parts = place(client, [w1, w2], job.id)
    rank = {w: a.rendezvous.machine_rank for w, a in parts.items()}
    main, other = sorted(parts, key=rank.get)
    by_id = {"w1": w1, "w2": w2}

    # Only rank 0's metrics count; another machine's are dropped, its log lines kept.
    by_id[other].report(job.id, 1, log_event("machine 1 up"), train_metrics(1))
    by_id[main].report(job.id, 1, train_metrics(1), batch=1)
    by_id[main].report(job.id, 1, train_metrics(2), batch=2)
    events = client.events(job.id)
    assert metric_steps(events) == [1, 2]
    assert "machine 1 up" in [e.log.message for e in events if e.HasField("log")]
    assert state_changes(events)[2] == (
        "RUNNING",
        f"training started on worker {other} (machine rank 1)",
    )

    by_id[other].finish(job.id, 1)  # finishes first: recorded, the job runs on
    running = client.get(job.id)
    assert running.state == job_pb2.RUNNING
    assert member_states(running) == {main: "RUNNING", other: "SUCCEEDED"}
    assert client.workers()[other].job_ids == [], "a member that is done is free again"

    by_id[main].finish(job.id, 1, artifacts={"model": "/out/model"})
    done = client.get(job.id)
    assert done.state == job_pb2.SUCCEEDED and done.artifacts["model"] == "/out/model"
    assert member_states(done) == {main: "SUCCEEDED", other: "SUCCEEDED"}


def test_members_survive_a_coordinator_restart(start_coordinator):
    first = start_coordinator()
    client = Client(first.address)
    w1, w2 = workers(client, 2)
    job = client.submit(gang_spec())
    assert len(place(client, [w1, w2], job.id)) == 2
    client.close()
    first.stop(grace=0)

    second = start_coordinator()
    client = Client(second.address)
    again = client.get(job.id)
    rank0 = next(w for w in (w1, w2) if w.worker_id == again.worker_id)
    assert [m.rank for m in again.members] == [0, 1]
    assert again.members[0].worker_id == rank0.worker_id
    assert again.rendezvous == f"{rank0.address}:{rank0.port}"
    assert {w: list(i.job_ids) for w, i in client.workers().items()} == {
        "w1": [job.id],
        "w2": [job.id],
    }
    client.close()


def test_two_gang_jobs_on_three_workers_never_split(client):
    trio = workers(client, 3)
    first = client.submit(gang_spec("first"))
    second = client.submit(gang_spec("second"))

    got = poll_together(trio)

    placed = {w: a for w, a in got.items() if a is not None}
    assert len(placed) == 2 and {a.job.id for a in placed.values()} == {first.id}
    idle = next(w for w, a in got.items() if a is None)
    still = client.get(second.id)
    assert still.state == job_pb2.QUEUED and not still.members and not still.worker_id
    assert still.attempt == 0, "no partial allocation: the second job was never placed"
    assert client.workers()[idle].job_ids == []

    # When the first gang ends, its two workers and the idle one can take the second.
    for worker in trio:
        if worker.worker_id in placed:
            worker.finish(first.id, 1)
    again = poll_together(trio)
    assert sum(a is not None for a in again.values()) == 2
    assert client.get(second.id).state == job_pb2.ASSIGNED


def test_smaller_jobs_backfill_around_a_gang_that_does_not_fit(client):
    (w1,) = workers(client, 1)
    gang = client.submit(gang_spec("big", priority=5))
    small = client.submit(make_spec("small"))

    assert w1.acquire().job.id == small.id
    assert client.get(gang.id).state == job_pb2.QUEUED


def test_gpu_gangs_need_the_gpus_on_every_member(client):
    w1, w2 = workers(client, 2, gpus=4)
    busy = client.submit(make_spec("busy", gpus=2))
    assert w1.acquire().job.id == busy.id  # w1 has 2 GPUs left
    gang = client.submit(gang_spec("gang", gpus=3))

    assert all(a is None for a in poll_together([w1, w2], wait=0.5).values())
    assert client.get(gang.id).reason == (
        "waiting for 2 workers with 3 free GPUs each at once (1 now)"
    )
    w1.finish(busy.id, 1)
    assert sum(a is not None for a in poll_together([w1, w2]).values()) == 2
    assert {w.free_gpus for w in client.workers().values()} == {1}


def test_workers_that_offer_no_port_get_no_gang(client):
    """An older worker sends no rendezvous port: it cannot run multi-node jobs."""
    old = Worker(client.stub, "old")
    (new,) = workers(client, 1)
    job = client.submit(gang_spec())

    with ThreadPoolExecutor(2) as pool:
        polls = [pool.submit(old.acquire, 1.0), pool.submit(new.acquire, 1.0)]
        assert [p.result() for p in polls] == [None, None]
    assert client.get(job.id).state == job_pb2.QUEUED


@pytest.fixture
def short_lease(start_coordinator):
    server = start_coordinator(heartbeat_interval_s=0.2, lease_timeout_s=1.0)
    c = Client(server.address)
    yield c
    c.close()


def test_a_lost_member_stops_the_gang_which_requeues_as_one(short_lease):
    client = short_lease
    w1, w2, w3 = workers(client, 3)
    job = client.submit(gang_spec())
    parts = place(client, [w1, w2], job.id)
    assert set(parts) == {"w1", "w2"}
    for worker in (w1, w2):
        worker.report(job.id, 1, log_event(f"{worker.worker_id} up"))

    # w2 goes silent; w1 keeps its lease and lists the job. The requeue can land between a
    # heartbeat and the state check, so collect what every heartbeat answered.
    lost, cancel = set(), set()

    def requeued_and_told():
        response = w1.heartbeat(job.id)
        lost.update(response.lost_job_ids)
        cancel.update(response.cancel_job_ids)
        return client.get(job.id).state == job_pb2.QUEUED and job.id in lost

    wait_for(requeued_and_told, timeout=15, interval=0.2)
    assert job.id in lost and job.id in cancel
    stopped = client.get(job.id)
    assert state_changes(client.events(job.id))[-1] == ("QUEUED", "worker lost")
    assert stopped.restarts == 0
    assert member_states(stopped) == {"w1": "CANCELLED", "w2": "CANCELLED"}
    assert all("worker lost" in m.reason for m in stopped.members)
    notes = [e.log.message for e in client.events(job.id) if e.HasField("log")]
    assert any("attempt 1 on workers" in n and "w2 sent no heartbeat" in n for n in notes), notes

    # Fenced: the old attempt's members can no longer report.
    with pytest.raises(grpc.RpcError) as refused:
        w1.report(job.id, 1, log_event("late"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # The next placement is attempt 2 for every member.
    w3.register()
    parts = place(client, [w1, w3], job.id)
    assert {a.attempt for a in parts.values()} == {2} and set(parts) == {"w1", "w3"}
    assert client.get(job.id).attempt == 2


def test_a_member_crash_restarts_the_gang_and_rank_0s_late_report_is_recorded(client):
    w1, w2 = workers(client, 2)
    job = client.submit(gang_spec())
    parts = place(client, [w1, w2], job.id)
    main = next(w for w, a in parts.items() if a.rendezvous.machine_rank == 0)
    by_id = {"w1": w1, "w2": w2}
    other = by_id["w2" if main == "w1" else "w1"]

    other.finish(job.id, 1, job_pb2.FAILED, reason="exit 1: gloo hung up", retryable=True)

    retried = client.get(job.id)
    assert retried.state == job_pb2.QUEUED and retried.restarts == 1
    assert "machine rank 1 on worker" in retried.reason and "gloo hung up" in retried.reason
    response = by_id[main].heartbeat(job.id)
    assert job.id in response.lost_job_ids, "rank 0 is told to kill its part at once"
    # Rank 0's own crash report arrives after: accepted, recorded, nothing more.
    by_id[main].finish(job.id, 1, job_pb2.FAILED, reason="peer gone", retryable=True)
    again = client.get(job.id)
    assert again.restarts == 1 and again.state == job_pb2.QUEUED
    assert {m.reason for m in again.members} == {"peer gone", "exit 1: gloo hung up"}


def test_a_member_draining_requeues_the_gang_without_a_restart(client):
    w1, w2 = workers(client, 2)
    job = client.submit(gang_spec())
    parts = place(client, [w1, w2], job.id)
    other = next(w for w, a in parts.items() if a.rendezvous.machine_rank == 1)

    {"w1": w1, "w2": w2}[other].release(job.id, 1, f"worker {other} draining")

    requeued = client.get(job.id)
    assert requeued.state == job_pb2.QUEUED and requeued.restarts == 0
    assert requeued.reason == f"worker {other} draining (machine rank 1)"


def test_cancel_reaches_every_member(client):
    w1, w2 = workers(client, 2)
    job = client.submit(gang_spec())
    parts = place(client, [w1, w2], job.id)
    client.cancel(job.id)

    for worker in (w1, w2):
        response = worker.heartbeat(job.id)
        assert list(response.cancel_job_ids) == [job.id] and not response.lost_job_ids
    main = next(w for w, a in parts.items() if a.rendezvous.machine_rank == 0)
    for worker in sorted((w1, w2), key=lambda w: w.worker_id == main):  # rank 0 last
        worker.finish(job.id, 1, job_pb2.CANCELLED)
    assert client.get(job.id).state == job_pb2.CANCELLED


def test_a_member_gets_a_lease_to_finish_after_rank_0_succeeded(short_lease):
    client = short_lease
    w1, w2 = workers(client, 2)
    job = client.submit(gang_spec())
    parts = place(client, [w1, w2], job.id)
    main = next(w for w, a in parts.items() if a.rendezvous.machine_rank == 0)
    by_id = {"w1": w1, "w2": w2}
    other = by_id["w2" if main == "w1" else "w1"]
    by_id[main].finish(job.id, 1)

    response = other.heartbeat(job.id)
    assert not response.lost_job_ids, "its launcher is exiting along with rank 0's"
    wait_for(lambda: job.id in other.heartbeat(job.id).lost_job_ids, timeout=3, interval=0.2)

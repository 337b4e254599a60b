"""Submitting, reading, listing and cancelling jobs; durability across restarts."""

from __future__ import annotations

import grpc
import pytest
from coordinator_helpers import Client, Worker, log_event, make_spec, state_changes

from tunefleet.v1 import coordinator_pb2, job_pb2


def test_submit_queues_the_job_with_a_first_state_change(client):
    job = client.submit(make_spec("first"))

    assert job.id.startswith("job-")
    assert job.state == job_pb2.QUEUED
    assert job.attempt == 0 and job.last_seq == 1
    assert job.created_at.seconds > 0
    assert job.spec.train.epochs == 3, "the stored spec has its defaults resolved"
    (event,) = client.events(job.id)
    assert (event.seq, event.job_id) == (1, job.id)
    assert event.state_change.state == job_pb2.QUEUED
    assert event.state_change.reason == "submitted"
    assert client.get(job.id) == job


def test_same_idempotency_key_returns_the_same_job(client):
    first = client.submit(make_spec("a"), key="retry-1")
    again = client.submit(make_spec("a"), key="retry-1")
    other = client.submit(make_spec("a"), key="retry-2")

    assert again.id == first.id
    assert other.id != first.id
    assert len(client.list_jobs()) == 2


def test_a_reused_idempotency_key_with_another_spec_is_refused(client):
    """It returned the first job, silently: `ftctl submit edited.yaml --idempotency-key K`
    said "submitted job-..." and the caller believed the edited spec was queued."""
    first = client.submit(make_spec("a"), key="run-1")
    with pytest.raises(grpc.RpcError) as info:
        client.submit(make_spec("a", gpus=1, priority=3), key="run-1")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert info.value.details() == (
        f"this idempotency key already submitted {first.id}, from a different spec (it "
        f"differs in resources, priority): use a new key, or the same spec to get {first.id} "
        "back"
    )
    assert client.submit(make_spec("a"), key="run-1").id == first.id  # a retry still is one
    assert len(client.list_jobs()) == 1


def test_invalid_spec_is_refused_with_every_problem(client):
    spec = make_spec("bad")
    spec.train.epochs = 0
    spec.optimizer.name = "rmsprop"

    with pytest.raises(grpc.RpcError) as info:
        client.submit(spec)

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    lines = info.value.details().splitlines()
    assert lines[0] == "invalid job spec:"
    paths = {line[2:].split(": ", 1)[0] for line in lines[1:]}
    assert paths == {"train.epochs", "optimizer.name"}
    assert client.list_jobs() == []


def test_submit_without_a_spec_is_refused(client):
    with pytest.raises(grpc.RpcError) as info:
        client.stub.SubmitJob(coordinator_pb2.SubmitJobRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_job_is_not_found_everywhere(client):
    for call in (client.get, client.cancel, client.events):
        with pytest.raises(grpc.RpcError) as info:
            call("job-nope")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "job job-nope not found"


def test_list_jobs_newest_first_with_state_filter_and_limit(client):
    ids = [client.submit(make_spec(f"j{i}")).id for i in range(4)]
    client.cancel(ids[1])

    assert [j.id for j in client.list_jobs()] == ids[::-1]
    assert [j.id for j in client.list_jobs(limit=2)] == ids[:1:-1]
    assert [j.id for j in client.list_jobs(states=[job_pb2.CANCELLED])] == [ids[1]]
    queued = client.list_jobs(states=[job_pb2.QUEUED, job_pb2.RUNNING])
    assert [j.id for j in queued] == [ids[3], ids[2], ids[0]]


def test_cancel_queued_job_ends_it_at_once_and_twice_is_refused(client):
    job = client.submit(make_spec())

    cancelled = client.cancel(job.id, reason="changed my mind")

    assert cancelled.state == job_pb2.CANCELLED
    assert cancelled.reason == "changed my mind"
    assert cancelled.finished_at.seconds > 0
    assert state_changes(client.events(job.id))[-1] == ("CANCELLED", "changed my mind")
    with pytest.raises(grpc.RpcError) as info:
        client.cancel(job.id)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == f"job {job.id} already CANCELLED"


def test_cancel_running_job_goes_through_its_worker(client):
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    assignment = worker.acquire()
    worker.report(job.id, assignment.attempt, log_event("training"))

    flagged = client.cancel(job.id)

    assert flagged.state == job_pb2.RUNNING and flagged.cancel_requested
    assert list(worker.heartbeat(job.id).cancel_job_ids) == [job.id]
    worker.finish(job.id, assignment.attempt, job_pb2.CANCELLED, reason="cancelled by user")
    done = client.get(job.id)
    assert done.state == job_pb2.CANCELLED and done.reason == "cancelled by user"
    assert list(worker.heartbeat().cancel_job_ids) == []
    with pytest.raises(grpc.RpcError) as info:
        client.cancel(job.id)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_jobs_events_and_workers_survive_a_restart(start_coordinator):
    server = start_coordinator()
    client = Client(server.address)
    worker = Worker(client.stub, "w-persist", gpus=2)
    done = client.submit(make_spec("done"), key="k1")
    assignment = worker.acquire()
    worker.report(done.id, assignment.attempt, log_event("one"), log_event("two"))
    worker.finish(
        done.id, assignment.attempt, artifacts={"model": "/out/model"}, summary={"acc": 0.9}
    )
    queued = client.submit(make_spec("waiting", gpus=8))
    before = {j.id: j for j in client.list_jobs()}
    events_before = client.events(done.id)
    client.close()
    server.stop()

    server = start_coordinator()
    client = Client(server.address)
    try:
        assert {j.id: j for j in client.list_jobs()} == before
        assert client.events(done.id) == events_before
        assert [e.seq for e in events_before] == [1, 2, 3, 4, 5, 6]
        restored = client.get(done.id)
        assert restored.artifacts["model"] == "/out/model"
        assert restored.summary["acc"] == pytest.approx(0.9)
        assert client.get(queued.id).state == job_pb2.QUEUED
        assert client.submit(make_spec("done"), key="k1").id == done.id
        (w,) = client.workers().values()
        assert (w.id, w.resources.gpus, w.state) == ("w-persist", 2, coordinator_pb2.LIVE)
        # The restarted coordinator still knows the worker: its heartbeats keep working.
        worker.stub = client.stub
        assert worker.heartbeat().known
    finally:
        client.close()

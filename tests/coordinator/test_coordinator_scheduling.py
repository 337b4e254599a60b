"""Placement, dependencies between jobs, worker leases, and the worker protocol's checks."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from coordinator_helpers import Client, Worker, log_event, make_spec, state_changes, wait_for

from tunefleet.v1 import coordinator_pb2, job_pb2


def test_jobs_are_placed_by_priority_then_age(client):
    worker = Worker(client.stub, "w-gpu", gpus=8)
    low_old = client.submit(make_spec("low-old", gpus=1)).id
    high_old = client.submit(make_spec("high-old", gpus=1, priority=5)).id
    high_new = client.submit(make_spec("high-new", gpus=1, priority=5)).id
    low_new = client.submit(make_spec("low-new", gpus=1)).id

    order = [worker.acquire().job.id for _ in range(4)]

    assert order == [high_old, high_new, low_old, low_new]
    assert worker.acquire() is None
    assert client.workers()["w-gpu"].free_gpus == 4


def test_assignment_sets_worker_attempt_and_state_change(client):
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())

    assignment = worker.acquire()

    assert assignment.attempt == 1
    assert assignment.job.id == job.id
    assert assignment.job.state == job_pb2.ASSIGNED
    assert assignment.job.worker_id == "w1"
    worker.report(job.id, 1, log_event("hello"))
    running = client.get(job.id)
    assert running.state == job_pb2.RUNNING and running.started_at.seconds > 0
    assert state_changes(client.events(job.id)) == [
        ("QUEUED", "submitted"),
        ("ASSIGNED", "assigned to worker w1"),
        ("RUNNING", "training started on worker w1"),
    ]


def test_job_needing_more_gpus_than_any_worker_stays_queued(client):
    worker = Worker(client.stub, "w-2gpu", gpus=2)
    big = client.submit(make_spec("big", gpus=4))
    small = client.submit(make_spec("small", gpus=2))

    assert worker.acquire().job.id == small.id, "a too-big job does not block smaller ones"
    assert worker.acquire() is None
    big = client.get(big.id)
    assert big.state == job_pb2.QUEUED
    assert big.reason == (
        "waiting for a worker with 4 free GPUs; no live worker has that many (the most: 2)"
    )


def test_cpu_worker_runs_one_cpu_job_at_a_time(client):
    worker = Worker(client.stub, "w-cpu")
    first = client.submit(make_spec("first")).id
    second = client.submit(make_spec("second")).id

    assert worker.acquire().job.id == first
    assert worker.acquire() is None
    assert client.get(second).reason == "waiting for a free worker"
    worker.finish(first, 1)
    assert worker.acquire().job.id == second


def test_long_poll_wakes_up_on_submit(client):
    worker = Worker(client.stub, "w-poll")
    got = {}

    def poll():
        started = time.monotonic()
        got["assignment"] = worker.acquire(wait=8)
        got["waited"] = time.monotonic() - started

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    job = client.submit(make_spec())
    poller.join(timeout=10)

    assert got["assignment"].job.id == job.id
    assert got["waited"] < 3, "the poll should end right after the submit"


def test_dependent_job_waits_for_its_source_then_starts_from_its_model(client):
    worker = Worker(client.stub, "w-gpu", gpus=4)
    source = client.submit(make_spec("pretrain", gpus=1))
    dependent = client.submit(make_spec("finetune", gpus=1, source_job=source.id))

    first = worker.acquire()
    assert first.job.id == source.id
    assert worker.acquire() is None, "the dependent waits while its source runs"
    waiting = client.get(dependent.id)
    assert waiting.state == job_pb2.QUEUED
    assert source.id in waiting.reason

    worker.finish(source.id, first.attempt, artifacts={"model": "/runs/pretrain/model"})
    second = worker.acquire()

    assert second.job.id == dependent.id
    assert second.job.spec.model.name == "/runs/pretrain/model"
    assert client.get(dependent.id).spec.model.name == "/runs/pretrain/model"


@pytest.mark.parametrize("ending", [job_pb2.FAILED, job_pb2.CANCELLED])
def test_dependent_jobs_fail_when_their_source_does_not_succeed(client, ending):
    worker = Worker(client.stub, "w1")
    source = client.submit(make_spec("pretrain"))
    child = client.submit(make_spec("child", source_job=source.id))
    grandchild = client.submit(make_spec("grandchild", source_job=child.id))
    assignment = worker.acquire()

    worker.finish(source.id, assignment.attempt, ending, reason="boom")

    name = job_pb2.JobState.Name(ending)
    assert client.get(child.id).state == job_pb2.FAILED
    assert client.get(child.id).reason == f"source job {source.id} ended {name}"
    assert client.get(grandchild.id).reason == f"source job {child.id} ended FAILED"
    # A job submitted after its source failed fails at once.
    late = client.submit(make_spec("late", source_job=source.id))
    assert late.state == job_pb2.FAILED


def test_source_job_must_exist(client):
    with pytest.raises(grpc.RpcError) as info:
        client.submit(make_spec("orphan", source_job="job-missing"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "- model.job: job job-missing not found" in info.value.details()


def test_reports_from_a_stale_attempt_or_another_worker_are_refused(client):
    worker = Worker(client.stub, "w1")
    intruder = Worker(client.stub, "w2")
    job = client.submit(make_spec())
    attempt = worker.acquire().attempt

    for who, att in ((worker, attempt + 1), (worker, attempt - 1), (intruder, attempt)):
        with pytest.raises(grpc.RpcError) as info:
            who.report(job.id, att, log_event("late"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as info:
            who.finish(job.id, att)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    assert worker.report(job.id, attempt, log_event("mine")) == 4
    worker.finish(job.id, attempt)
    worker.finish(job.id, attempt)  # a retried FinishJob is accepted
    with pytest.raises(grpc.RpcError) as info:
        worker.report(job.id, attempt, log_event("after the end"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert client.get(job.id).state == job_pb2.SUCCEEDED


def test_workers_cannot_forge_state_changes(client):
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    attempt = worker.acquire().attempt
    forged = job_pb2.Event(state_change=job_pb2.StateChange(state=job_pb2.SUCCEEDED))

    for bad in (forged, job_pb2.Event()):
        with pytest.raises(grpc.RpcError) as info:
            worker.report(job.id, attempt, bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        worker.finish(job.id, attempt, job_pb2.RUNNING)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.get(job.id).state == job_pb2.ASSIGNED


def test_lost_worker_requeues_its_job_and_must_register_again(start_coordinator):
    server = start_coordinator(lease_timeout_s=1.0)
    client = Client(server.address)
    try:
        worker = Worker(client.stub, "w-flaky")
        job = client.submit(make_spec())
        attempt = worker.acquire().attempt
        worker.report(job.id, attempt, log_event("working"))

        lost = wait_for(lambda: client.get(job.id).state == job_pb2.QUEUED, timeout=5)

        assert lost
        requeued = client.get(job.id)
        assert (requeued.worker_id, requeued.restarts) == ("", 0)
        # Soon "waiting for a free worker": no other worker is there.
        assert requeued.reason in ("worker lost", "waiting for a free worker")
        assert state_changes(client.events(job.id))[-1] == ("QUEUED", "worker lost")
        note = client.events(job.id)[-2].log
        assert note.level == "warning"
        assert note.message.startswith("attempt 1 on worker w-flaky ended: worker w-flaky sent")
        assert "not counted against train.max_restarts" in note.message
        assert client.workers()["w-flaky"].state == coordinator_pb2.LOST
        response = worker.heartbeat(job.id)
        assert not response.known
        assert list(response.cancel_job_ids) == list(response.lost_job_ids) == [job.id]
        with pytest.raises(grpc.RpcError) as info:
            worker.acquire()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as info:
            worker.report(job.id, attempt, log_event("still here"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        worker.register()
        assert worker.heartbeat().known
        assert client.workers()["w-flaky"].state == coordinator_pb2.LIVE
    finally:
        client.close()


def test_assignment_the_worker_never_got_is_written_off(start_coordinator):
    server = start_coordinator(lease_timeout_s=1.0)
    client = Client(server.address)
    try:
        worker = Worker(client.stub, "w-deaf")
        job = client.submit(make_spec())
        worker.acquire()  # as if the reply was lost: the worker never lists the job

        wait_for(lambda: worker.heartbeat().known and client.get(job.id).state == job_pb2.QUEUED)

        assert client.get(job.id).reason == "worker w-deaf never started the job"
        assert worker.acquire().attempt == 2  # placed again
    finally:
        client.close()


def test_heartbeats_keep_a_worker_alive(start_coordinator):
    server = start_coordinator(lease_timeout_s=1.0)
    client = Client(server.address)
    try:
        worker = Worker(client.stub, "w-steady")
        job = client.submit(make_spec())
        worker.acquire()
        for _ in range(8):
            time.sleep(0.25)
            assert worker.heartbeat(job.id).known
        assert client.get(job.id).state == job_pb2.ASSIGNED
    finally:
        client.close()


def test_restarted_worker_loses_what_it_ran(client):
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    worker.acquire()

    worker.register()  # same id: the worker process restarted

    assert client.get(job.id).state == job_pb2.QUEUED
    assert client.get(job.id).reason == "worker w1 restarted"


def test_list_workers_shows_capacity_and_jobs(client):
    Worker(client.stub, "w-cpu")
    gpu = Worker(client.stub, "w-gpu", gpus=4)
    job = client.submit(make_spec(gpus=3))
    gpu.acquire()

    workers = client.workers()

    assert set(workers) == {"w-cpu", "w-gpu"}
    assert workers["w-gpu"].free_gpus == 1
    assert list(workers["w-gpu"].job_ids) == [job.id]
    assert workers["w-gpu"].hostname == "test-host"
    assert workers["w-cpu"].state == coordinator_pb2.LIVE
    assert 0 <= workers["w-cpu"].last_heartbeat_age_s < 5

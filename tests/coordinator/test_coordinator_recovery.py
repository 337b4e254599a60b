"""Requeues, crash restarts with backoff, fencing of stale attempts, idempotent reports,
and metrics that a resumed attempt replays -- the coordinator's half of failure recovery,
driven step by step over real gRPC (the real processes are in tests/faults)."""

from __future__ import annotations

import sqlite3
import time

import grpc
import pytest
from coordinator_helpers import (
    Client,
    Worker,
    log_event,
    make_spec,
    metric_steps,
    state_changes,
    train_metrics,
    wait_for,
)

from tunefleet.coordinator.store import JobStore
from tunefleet.v1 import job_pb2


def _refused(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code()


def _spec(max_restarts: int | None = None):
    spec = make_spec()
    if max_restarts is not None:
        spec.train.max_restarts = max_restarts
    return spec


def test_max_restarts_defaults_to_three(client):
    assert client.submit(make_spec()).spec.train.max_restarts == 3


def test_a_lost_workers_job_runs_again_elsewhere_and_the_old_attempt_is_fenced(
    start_coordinator,
):
    server = start_coordinator(lease_timeout_s=0.6)
    client = Client(server.address)
    try:
        old, new = Worker(client.stub, "w-old"), Worker(client.stub, "w-new")
        job = client.submit(make_spec())
        first = old.acquire()
        old.report(job.id, first.attempt, log_event("working"))

        # w-new keeps its lease; w-old goes silent.
        second = wait_for(lambda: new.heartbeat().known and new.acquire(wait=0.05), timeout=5)

        assert (second.job.id, second.attempt) == (job.id, 2)
        assert client.get(job.id).worker_id == "w-new"
        # Everything the old attempt says now is refused; nothing it says lands.
        last_seq = client.get(job.id).last_seq
        assert (
            _refused(old.report, job.id, 1, log_event("late"))
            == grpc.StatusCode.FAILED_PRECONDITION
        )
        assert _refused(old.finish, job.id, 1) == grpc.StatusCode.FAILED_PRECONDITION
        assert _refused(old.release, job.id, 1) == grpc.StatusCode.FAILED_PRECONDITION
        assert client.get(job.id).last_seq == last_seq
        # The new attempt is unaffected.
        new.report(job.id, 2, log_event("resumed"))
        new.finish(job.id, 2)
        done = client.get(job.id)
        assert (done.state, done.attempt, done.restarts) == (job_pb2.SUCCEEDED, 2, 0)
        assert [s for s, _ in state_changes(client.events(job.id))] == [
            "QUEUED", "ASSIGNED", "RUNNING", "QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED",
        ]  # fmt: skip
    finally:
        client.close()


def test_a_crash_is_restarted_with_backoff_until_max_restarts(client):
    worker = Worker(client.stub, "w1")
    job = client.submit(_spec(max_restarts=1))
    attempt = worker.acquire().attempt
    worker.report(job.id, attempt, log_event("training"))

    worker.finish(job.id, attempt, job_pb2.FAILED, reason="exit -9 (SIGKILL)", retryable=True)

    queued = client.get(job.id)
    assert (queued.state, queued.restarts) == (job_pb2.QUEUED, 1)
    assert queued.reason == "restart 1 of 1 in 1 s: exit -9 (SIGKILL)"
    assert queued.not_before.ToNanoseconds() / 1e9 > time.time() + 0.5
    assert worker.acquire(wait=0.2) is None  # still backing off
    second = worker.acquire(wait=3)  # placed when the backoff ends
    assert second.attempt == 2
    assert time.time() >= queued.not_before.ToNanoseconds() / 1e9

    worker.finish(job.id, 2, job_pb2.FAILED, reason="exit -9 (SIGKILL)", retryable=True)

    failed = client.get(job.id)
    assert failed.state == job_pb2.FAILED
    assert failed.reason == "exit -9 (SIGKILL) (no restarts left: train.max_restarts is 1)"
    notes = [e.log.message for e in client.events(job.id) if e.WhichOneof("kind") == "log"]
    assert any(m.startswith("attempt 1 on worker w1 crashed: exit -9") for m in notes)


def test_deterministic_failures_are_not_retried(client):
    worker = Worker(client.stub, "w1")
    job = client.submit(_spec(max_restarts=3))
    attempt = worker.acquire().attempt

    worker.finish(job.id, attempt, job_pb2.FAILED, reason="data.train: no such file")

    done = client.get(job.id)
    assert (done.state, done.reason, done.restarts) == (
        job_pb2.FAILED,
        "data.train: no such file",
        0,
    )


def test_a_released_job_is_requeued_without_counting_a_restart(client):
    worker, other = Worker(client.stub, "w1"), Worker(client.stub, "w2")
    job = client.submit(_spec(max_restarts=0))
    attempt = worker.acquire().attempt
    worker.report(job.id, attempt, log_event("training"))

    worker.release(job.id, attempt, "worker w1 is shutting down (drained)")

    queued = client.get(job.id)
    assert (queued.state, queued.restarts, queued.worker_id) == (job_pb2.QUEUED, 0, "")
    assert queued.reason == "worker w1 is shutting down (drained)"
    assert other.acquire().attempt == 2
    # A retried release (its reply was lost) is refused: the attempt is over.
    assert _refused(worker.release, job.id, attempt) == grpc.StatusCode.FAILED_PRECONDITION


def test_releasing_a_job_with_a_pending_cancel_cancels_it(client):
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    attempt = worker.acquire().attempt
    client.cancel(job.id)

    worker.release(job.id, attempt, "preempted")

    assert client.get(job.id).state == job_pb2.CANCELLED


def test_a_retried_report_batch_is_stored_once(client):
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    attempt = worker.acquire().attempt

    first = worker.report(job.id, attempt, log_event("a"), log_event("b"), batch=1)
    again = worker.report(job.id, attempt, log_event("a"), log_event("b"), batch=1)
    third = worker.report(job.id, attempt, log_event("c"), batch=2)

    assert first == again == 5 and third == 6
    messages = [e.log.message for e in client.events(job.id) if e.WhichOneof("kind") == "log"]
    assert messages == ["a", "b", "c"]


def test_a_batch_larger_than_one_insert_statement_is_stored_whole_and_in_order(client):
    """Event rows go in with multi-row INSERTs of a fixed size: a batch across that size
    (and a single event after it) must keep every event, its content and its seq."""
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    attempt = worker.acquire().attempt
    steps = range(1, 2 * 128 + 6)  # two full statements and a partial one

    last = worker.report(job.id, attempt, *(train_metrics(s) for s in steps), batch=1)
    after = worker.report(job.id, attempt, log_event("after"), batch=2)

    events = client.events(job.id)
    assert metric_steps(events) == list(steps)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert after == last + 1 == events[-1].seq and events[-1].log.message == "after"


def test_a_resumed_attempt_does_not_repeat_steps_already_reported(client):
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    attempt = worker.acquire().attempt
    worker.report(job.id, attempt, *(train_metrics(s) for s in (2, 4, 6)), batch=1)
    worker.report(job.id, attempt, train_metrics(4, "eval"), train_metrics(8), batch=2)
    worker.release(job.id, attempt, "preempted")

    # The next attempt resumes from a checkpoint at step 4 and replays steps 6 and 8.
    attempt = worker.acquire().attempt
    assert attempt == 2
    worker.report(job.id, attempt, *(train_metrics(s) for s in (6, 8, 10)), batch=1)
    worker.report(job.id, attempt, train_metrics(8, "eval"), batch=2)

    events = client.events(job.id)
    assert metric_steps(events) == [2, 4, 6, 8, 10]
    assert metric_steps(events, "eval") == [4, 8]
    assert [e.attempt for e in events if metric_steps([e]) == [10]] == [2]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_a_running_job_its_worker_stops_listing_is_requeued(start_coordinator):
    server = start_coordinator(lease_timeout_s=0.5)
    client = Client(server.address)
    try:
        worker = Worker(client.stub, "w1")
        job = client.submit(make_spec())
        attempt = worker.acquire().attempt
        worker.report(job.id, attempt, log_event("training"))
        assert worker.heartbeat(job.id).known

        wait_for(lambda: worker.heartbeat().known and client.get(job.id).state == job_pb2.QUEUED)

        assert client.get(job.id).reason == "worker w1 no longer runs the job"
    finally:
        client.close()


def test_restart_keeps_a_running_job_with_its_worker(start_coordinator):
    server = start_coordinator(lease_timeout_s=1.0)
    client = Client(server.address)
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    attempt = worker.acquire().attempt
    worker.report(job.id, attempt, log_event("before"), batch=1)
    client.close()
    server.stop(grace=0)
    time.sleep(1.5)  # longer than the lease: the coordinator's downtime is not the worker's

    server = start_coordinator(lease_timeout_s=1.0)
    client = Client(server.address)
    worker.stub = client.stub
    try:
        assert worker.heartbeat(job.id).known
        assert client.get(job.id).state == job_pb2.RUNNING
        # The batch whose reply was lost in the crash is recognised after the restart.
        last = worker.report(job.id, attempt, log_event("before"), batch=1)
        assert worker.report(job.id, attempt, log_event("after"), batch=2) == last + 1
        worker.finish(job.id, attempt)
        assert client.get(job.id).state == job_pb2.SUCCEEDED
    finally:
        client.close()


def test_an_older_database_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, spec BLOB NOT NULL, state INTEGER NOT NULL, "
        "reason TEXT NOT NULL DEFAULT '', attempt INTEGER NOT NULL DEFAULT 0, "
        "priority INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL, "
        "finished_at REAL, updated_at REAL NOT NULL, worker_id TEXT NOT NULL DEFAULT '', "
        "artifacts TEXT NOT NULL DEFAULT '{}', summary TEXT NOT NULL DEFAULT '{}', "
        "last_seq INTEGER NOT NULL DEFAULT 0, idempotency_key TEXT UNIQUE, "
        "cancel_requested INTEGER NOT NULL DEFAULT 0, source_job TEXT NOT NULL DEFAULT '');"
        "INSERT INTO jobs (id, spec, state, created_at, updated_at) VALUES ('job-1', x'', 1, 1, 1);"
        "PRAGMA user_version=1;"
    )
    db.close()

    store = JobStore(path)
    try:
        job = store.get_job("job-1")
        assert (job.state, job.restarts, job.not_before.seconds) == (job_pb2.QUEUED, 0, 0)
        assert store.append_report("job-1", 1, 1, [train_metrics(3)])[1] is False
        assert store.append_report("job-1", 1, 1, [train_metrics(3)])[1] is True
    finally:
        store.close()


def test_progress_reports_are_all_stored_and_leave_the_step_marks_alone(client):
    """A progress report (phase progress/...) carries the optimizer step the run is at, and
    every evaluation's progress repeats that step: none is dropped, and a measurement at the
    same step after them is still kept."""
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    attempt = worker.acquire().attempt
    worker.report(
        job.id,
        attempt,
        train_metrics(4, "progress/evaluating"),
        train_metrics(4, "progress/evaluating"),
        train_metrics(4, "eval"),
        train_metrics(2, "progress/evaluating"),
        batch=1,
    )
    events = client.events(job.id)
    assert metric_steps(events, "progress/evaluating") == [4, 4, 2]
    assert metric_steps(events, "eval") == [4]

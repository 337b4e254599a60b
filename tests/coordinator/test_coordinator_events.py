"""StreamEvents: replay, live follow by many followers, disconnects, shutdown."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from coordinator_helpers import Client, Worker, log_event, make_spec, wait_for

from tunefleet.v1 import coordinator_pb2, job_pb2


def _follow_in_thread(client: Client, job_id: str, results: dict, key, **kw) -> threading.Thread:
    def follow():
        try:
            results[key] = client.events(job_id, follow=True, timeout=15, **kw)
        except grpc.RpcError as exc:  # surfaces in the assertions below
            results[key] = exc

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return thread


def test_replay_returns_events_after_the_given_seq(client):
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    attempt = worker.acquire().attempt
    worker.report(job.id, attempt, *[log_event(f"line {i}") for i in range(5)])

    everything = client.events(job.id)
    tail = client.events(job.id, after_seq=5)

    assert [e.seq for e in everything] == list(range(1, 9))
    assert [e.log.message for e in tail] == ["line 2", "line 3", "line 4"]
    assert all(e.attempt == attempt for e in everything[1:])
    assert all(e.job_id == job.id and e.time.seconds > 0 for e in everything)


def test_three_followers_see_the_same_contiguous_events_live(client, coordinator):
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    results: dict = {}
    followers = [_follow_in_thread(client, job.id, results, i) for i in range(3)]
    wait_for(lambda: coordinator.bus.follower_count(job.id) == 3)

    attempt = worker.acquire().attempt
    for batch in range(5):
        worker.report(job.id, attempt, *[log_event(f"{batch}.{i}") for i in range(20)])
        time.sleep(0.02)
    worker.finish(job.id, attempt)
    for follower in followers:
        follower.join(timeout=10)

    expected = client.events(job.id)
    assert [e.seq for e in expected] == list(range(1, 105))
    for i in range(3):
        assert results[i] == expected, f"follower {i} differs"
    assert expected[-1].state_change.state == job_pb2.SUCCEEDED
    wait_for(lambda: coordinator.bus.follower_count() == 0)


def test_following_a_finished_job_replays_and_ends(client):
    job = client.submit(make_spec())
    client.cancel(job.id)

    events = client.events(job.id, follow=True, timeout=5)

    assert [e.state_change.state for e in events] == [job_pb2.QUEUED, job_pb2.CANCELLED]


def test_follower_that_starts_late_catches_up_then_follows(client):
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    attempt = worker.acquire().attempt
    worker.report(job.id, attempt, *[log_event(f"early {i}") for i in range(600)])
    results: dict = {}

    follower = _follow_in_thread(client, job.id, results, "late", after_seq=1)
    time.sleep(0.2)
    worker.report(job.id, attempt, log_event("live"))
    worker.finish(job.id, attempt, job_pb2.FAILED, reason="boom")
    follower.join(timeout=10)

    seqs = [e.seq for e in results["late"]]
    assert seqs == list(range(2, seqs[-1] + 1))
    assert results["late"][-1].state_change.reason == "boom"


def test_a_follower_from_beyond_the_last_event_ends_when_the_job_does(client):
    """after_seq past the job's last event: the job's end (numbered below it) ends the
    follow at once, not after the follower's periodic recheck (10 s)."""
    worker = Worker(client.stub, "w1")
    job = client.submit(make_spec())
    attempt = worker.acquire().attempt
    results: dict = {}
    follower = _follow_in_thread(client, job.id, results, "ahead", after_seq=999)
    time.sleep(0.3)  # following: nothing beyond 999 yet
    started = time.monotonic()
    worker.finish(job.id, attempt, job_pb2.SUCCEEDED)
    follower.join(timeout=15)
    assert results["ahead"] == [] and time.monotonic() - started < 3


def test_disconnected_followers_release_their_server_threads(client, coordinator):
    job = client.submit(make_spec())
    request = coordinator_pb2.StreamEventsRequest(job_id=job.id, follow=True)

    # More abandoned follows than the server has threads (32): a leak would hang here.
    for _ in range(40):
        call = client.stub.StreamEvents(request, timeout=10)
        assert next(call).seq == 1
        call.cancel()

    started = time.monotonic()
    assert client.get(job.id).state == job_pb2.QUEUED
    assert time.monotonic() - started < 2
    wait_for(lambda: coordinator.bus.follower_count() == 0)


def test_stopping_the_server_ends_follows(start_coordinator):
    server = start_coordinator()
    client = Client(server.address)
    try:
        job = client.submit(make_spec())
        results: dict = {}
        follower = _follow_in_thread(client, job.id, results, "f")
        wait_for(lambda: server.bus.follower_count(job.id) == 1)

        started = time.monotonic()
        server.stop(grace=2)
        follower.join(timeout=5)

        assert not follower.is_alive()
        assert time.monotonic() - started < 3
        assert isinstance(results["f"], grpc.RpcError)
        assert results["f"].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    finally:
        client.close()


@pytest.mark.parametrize("follow", [False, True])
def test_events_of_a_queued_job(client, follow):
    job = client.submit(make_spec())
    if follow:
        with pytest.raises(grpc.RpcError) as info:
            client.events(job.id, follow=True, timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        assert [e.seq for e in client.events(job.id)] == [1]

"""The SDK against a real coordinator: submit, get, list, cancel, wait, and event streams
that survive a coordinator restart without losing or repeating an event."""

from __future__ import annotations

import threading
import time

import pytest
from client_helpers import (
    BAD_SUBMIT_PATHS,
    needs_coordinator,
    unused_port,
)

from tunefleet.client import (
    Client,
    DeadlineExceeded,
    JobFailed,
    JobState,
    LocalCluster,
    RetryPolicy,
    ValidationError,
)
from tunefleet.spec import prepare
from tunefleet.v1 import job_pb2

pytestmark = needs_coordinator


def test_submit_a_dict_a_yaml_and_a_jobspec(cluster, job_dict, job_yaml):
    with cluster.client() as client:
        from_dict = client.submit(job_dict)
        from_yaml = client.submit(job_yaml)
        from_spec = client.submit(prepare(job_dict), priority=7)
        for handle in (from_dict, from_yaml, from_spec):
            job = handle.get()
            assert job.state is JobState.QUEUED and job.name == "client-test"
            assert handle.state is JobState.QUEUED
        assert from_spec.get().priority == 7
        # The YAML's relative `train.csv` was resolved against the YAML's folder.
        assert from_yaml.get().spec.data.train == job_dict["data"]["train"]
        ids = {j.id for j in client.list()}
        assert {from_dict.id, from_yaml.id, from_spec.id} <= ids
        assert client.list(["running"]) == []
        assert len(client.list(limit=2)) == 2


def test_submit_is_idempotent_with_a_key(cluster, job_dict):
    with cluster.client() as client:
        first = client.submit(job_dict, idempotency_key="same-key")
        again = client.submit(job_dict, idempotency_key="same-key")
        other = client.submit(job_dict)
    assert first.id == again.id != other.id


def test_invalid_spec_is_rejected_locally_with_every_problem(cluster, bad_yaml):
    with cluster.client() as client:
        with pytest.raises(ValidationError) as info:
            client.submit(bad_yaml)
        assert client.list() == []
    assert [e.path for e in info.value.errors] == BAD_SUBMIT_PATHS


def test_list_rejects_an_unknown_state(cluster):
    with cluster.client() as client, pytest.raises(ValidationError, match="finished"):
        client.list(["finished"])


def test_cancel_and_wait(cluster, job_dict):
    with cluster.client() as client:
        handle = client.submit(job_dict)
        cancelled = handle.cancel("not needed")
        assert cancelled.state is JobState.CANCELLED and cancelled.reason == "not needed"
        final = handle.wait(timeout=5)
        assert final.state is JobState.CANCELLED
        with pytest.raises(JobFailed) as info:
            handle.wait(raise_on_failure=True)
        assert info.value.job.state is JobState.CANCELLED


def test_wait_times_out_on_a_job_nobody_runs(cluster, job_dict):
    with cluster.client() as client:
        handle = client.submit(job_dict)
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            handle.wait(timeout=0.5)
        assert time.monotonic() - start < 3
        assert handle.state is JobState.QUEUED  # waiting did not touch the job


def test_follow_a_job_through_its_life(cluster, scripted_worker, job_dict):
    with cluster.client() as client:
        handle = client.submit(job_dict)
        job_id, attempt = scripted_worker.acquire()
        assert job_id == handle.id
        scripted_worker.log(job_id, attempt, "one", "two")
        scripted_worker.report(
            job_id,
            attempt,
            [job_pb2.Event(metrics=job_pb2.Metrics(phase="train", step=1, loss=0.5))],
        )
        scripted_worker.finish(job_id, attempt, artifacts={"model": "/m"}, summary={"acc": 1.0})

        events = list(handle.events())
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(events) + 1))
        assert events[0].state_change.state is JobState.QUEUED
        assert events[-1].state_change.state is JobState.SUCCEEDED
        assert [e.log.message for e in events if e.kind == "log"] == ["one", "two"]
        assert [e.metrics.loss for e in events if e.kind == "metrics"] == [0.5]

        final = handle.wait(timeout=5, raise_on_failure=True)
        assert final.artifacts == {"model": "/m"} and final.summary == {"acc": 1.0}

        # Resuming after a seq yields exactly the rest.
        rest = list(client.events(handle.id, after_seq=2, follow=False))
        assert [e.seq for e in rest] == seqs[2:]


def test_a_failed_job_raises_job_failed_when_asked(cluster, scripted_worker, job_dict):
    with cluster.client() as client:
        handle = client.submit(job_dict)
        job_id, attempt = scripted_worker.acquire()
        scripted_worker.finish(job_id, attempt, state=job_pb2.FAILED, reason="loss is NaN")
        assert handle.wait(timeout=5).state is JobState.FAILED
        with pytest.raises(JobFailed, match="loss is NaN"):
            handle.wait(timeout=5, raise_on_failure=True)


def test_closing_an_event_iterator_early_cancels_the_stream(cluster, job_dict):
    with cluster.client() as client:
        handle = client.submit(job_dict)
        events = handle.events()  # follows: would block forever on a queued job
        assert next(events).state_change.state is JobState.QUEUED
        events.close()
        assert handle.state is JobState.QUEUED  # the channel is still fine


def test_events_survive_a_coordinator_restart(cluster, scripted_worker, job_dict):
    """Restart the coordinator (same port, same db) under a following iterator: it must
    reconnect and deliver every event exactly once, in order, through the final one."""
    retry = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, stream_max_elapsed_s=20)
    with cluster.client(retry=retry) as client:
        # Record each StreamEventBatches request, to see the resume point of the reconnect.
        requests = []
        stream = client._stub.StreamEventBatches
        client._stub.StreamEventBatches = lambda req, **kw: (
            requests.append(req) or stream(req, **kw)
        )
        handle = client.submit(job_dict)
        job_id, attempt = scripted_worker.acquire()
        scripted_worker.log(job_id, attempt, "before-1", "before-2")
        before = handle.get().last_seq

        seen: list = []
        errors: list = []
        caught_up = threading.Event()

        def follow() -> None:
            try:
                for event in handle.events():
                    seen.append(event)
                    if event.seq >= before:
                        caught_up.set()
            except Exception as e:  # surfaced by the assertions below
                errors.append(e)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        assert caught_up.wait(10), "the follower never received the first events"

        cluster.restart_coordinator(down_s=0.5)
        # The coordinator kept the worker and its lease in its database: the worker just
        # carries on reporting (its channel reconnects by itself).
        scripted_worker.log(job_id, attempt, "after-1", "after-2")
        scripted_worker.finish(job_id, attempt)

        thread.join(20)
        assert not thread.is_alive(), "the follower did not finish"
        assert not errors, errors
    assert len(requests) >= 2, "the stream never reconnected"
    assert requests[0].after_seq == 0 and requests[1].after_seq >= before
    seqs = [e.seq for e in seen]
    assert seqs == list(range(1, len(seen) + 1)), seqs  # no gap, no duplicate
    logs = [e.log.message for e in seen if e.kind == "log"]
    assert logs == ["before-1", "before-2", "after-1", "after-2"]
    assert seen[-1].state_change.state is JobState.SUCCEEDED


def test_unary_calls_retry_until_the_coordinator_comes_up(tmp_path, job_dict):
    port = unused_port()
    cluster = LocalCluster(listen=f"127.0.0.1:{port}", db_path=tmp_path / "db", worker=False)
    starter = threading.Timer(0.7, cluster.start_coordinator)
    retry = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.3, max_elapsed_s=10)
    starter.start()
    try:
        with Client(f"127.0.0.1:{port}", retry=retry) as client:
            handle = client.submit(job_dict)  # first tries: UNAVAILABLE
            assert handle.get().state is JobState.QUEUED
    finally:
        starter.join()
        cluster.stop()


def test_a_chained_jobs_model_job_may_be_short_as_a_job_argument_may(cluster, job_dict):
    """`model.job: 70c16df6` (its digits) or a unique prefix is the full id in the stored
    spec; an unknown one is a ValidationError on model.job with "did you mean"."""
    with Client(cluster.address) as client:
        source = client.submit(job_dict)
        digits = source.id.removeprefix("job-")
        for given in (digits, digits[:5], source.id):
            chained = {**job_dict, "model": {"source": "job", "job": given}}
            assert client.get(client.submit(chained).id).spec.model.job == source.id
        typo = digits[:-1] + ("0" if digits[-1] != "0" else "1")
        with pytest.raises(ValidationError) as e:
            client.submit({**job_dict, "model": {"source": "job", "job": typo}})
        assert [x.path for x in e.value.errors] == ["model.job"]
        assert f"did you mean {source.id}" in e.value.errors[0].message

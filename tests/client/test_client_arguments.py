"""The SDK's own arguments, wrong in type or range: a ValidationError naming the argument
and what it takes, never protobuf's bare TypeError ("bad argument type for built-in
operation") or an AttributeError from inside the SDK."""

from __future__ import annotations

import pytest
from client_helpers import needs_coordinator

from tunefleet.client import Client, JobState, NotFound, ValidationError

pytestmark = needs_coordinator


def test_wrong_argument_types_name_the_argument(cluster, job_dict):
    with cluster.client() as client:
        handle = client.submit(job_dict)
        job_id = "job_id: expected a string such as 'job-d3be7e24', got"
        seconds = "timeout: expected seconds (a number) or None, got"
        calls = [
            (f"{job_id} int 123", lambda: client.get(123)),
            (f"{job_id} NoneType None", lambda: client.cancel(None)),
            (f"{job_id} bytes", lambda: client.job(b"job-1")),
            (f"{job_id} int 7", lambda: client.events(7)),
            ("reason: expected a string, got int 5", lambda: client.cancel(handle.id, reason=5)),
            ("after_seq: expected an integer, got 'x'", lambda: client.events(handle.id, "x")),
            ("after_seq: expected an integer, got 1.5", lambda: client.events(handle.id, 1.5)),
            ("after_seq: must be from", lambda: client.events(handle.id, 2**70)),
            (f"{seconds} '1'", lambda: client.events(handle.id, timeout="1")),
            (f"{seconds} nan", lambda: handle.wait(timeout=float("nan"))),
            (
                "priority: expected an integer, got 'high'",
                lambda: client.submit(job_dict, priority="high"),
            ),
            (
                "priority: must be from -2147483648 to",
                lambda: client.submit(job_dict, priority=2**40),
            ),
            (
                "idempotency_key: expected a string",
                lambda: client.submit(job_dict, idempotency_key=5),
            ),
            ("worker_id: expected a string, got int 5", lambda: client.drain_worker(5)),
            ("target: expected a string such as '127.0.0.1:50051'", lambda: Client(5)),
            (f"{seconds} 'x'", lambda: Client(cluster.address, timeout="x")),
        ]
        for message, call in calls:
            with pytest.raises(ValidationError) as info:
                result = call()
                list(result)  # events() checks before its first event is asked for
            assert message in info.value.message
        assert [j.id for j in client.list()] == [handle.id]  # no refused submit got through


def test_list_takes_one_state_as_a_string_not_as_its_letters(cluster, job_dict):
    with cluster.client() as client:
        handle = client.submit(job_dict)
        for states in ("queued", "QUEUED", JobState.QUEUED):
            assert [j.id for j in client.list(states)] == [handle.id]
        assert client.list("running") == []


def test_a_blank_job_id_says_none_was_given(cluster, job_dict):
    with cluster.client() as client:
        client.submit(job_dict)
        for blank in ("", "  "):
            with pytest.raises(NotFound, match="no job id given: name a job as printed"):
                client.get(blank)

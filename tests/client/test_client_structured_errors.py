"""Field errors and exhausted limits cross the wire as structured status details
(google.rpc.BadRequest / QuotaFailure), not as text the SDK parses back: a problem whose
message holds newlines and "- x: y" lines arrives as one problem, intact."""

from __future__ import annotations

import math
from concurrent import futures

import grpc
import pytest
from client_helpers import needs_coordinator

import tunefleet.client as tc
from tunefleet.client import Client, LocalCluster, RetryPolicy
from tunefleet.spec import FieldError, spec_from_dict
from tunefleet.status_details import (
    TRAILER_BUDGET_BYTES,
    FieldViolation,
    QuotaViolation,
    read_details,
    to_status,
)
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc

# A URL's scheme is quoted verbatim in "SCHEME:// is not supported" (a schema problem, so
# the coordinator reports it too); this one looks like two more problems to anything that
# splits the message into "- path: message" lines.
HOSTILE_PATH = "s\n- x: y\n- data.test: f://b/train.csv"


def _expected(spec: dict) -> FieldError:
    """The one validator's data.train problem, as the coordinator must relay it."""
    from tunefleet.spec import validate

    return next(
        e for e in validate(spec_from_dict(spec), check_paths=False) if e.path == "data.train"
    )


@needs_coordinator
def test_a_message_with_newlines_and_dash_lines_round_trips_intact(cluster, job_dict):
    bad = {**job_dict, "data": {"source": "csv", "train": HOSTILE_PATH}}
    with cluster.client() as client, pytest.raises(tc.ValidationError) as info:
        client._unary(  # past the SDK's own check: the coordinator's answer is what we see
            client._stub.SubmitJob, coordinator_pb2.SubmitJobRequest(spec=spec_from_dict(bad))
        )
    assert info.value.code == "INVALID_ARGUMENT"
    expected = _expected(bad)
    assert "\n- x: y\n- data.test: f://" in expected.message
    assert info.value.errors == [expected]
    # The human message is the readable text it always was.
    assert info.value.message == f"invalid job spec:\n- data.train: {expected.message}"


@needs_coordinator
def test_every_problem_keeps_its_path_and_order(cluster, job_dict):
    bad = {
        **job_dict,
        "data": {"source": "csv", "train": HOSTILE_PATH},
        "optimizer": {"name": "rmsprop"},
    }
    with cluster.client() as client, pytest.raises(tc.ValidationError) as info:
        # Sent as-is, past the SDK's own check, so the coordinator's answer is what we see.
        client._unary(
            client._stub.SubmitJob, coordinator_pb2.SubmitJobRequest(spec=spec_from_dict(bad))
        )
    paths = [e.path for e in info.value.errors]
    assert "optimizer.name" in paths and "data.train" in paths
    assert len(paths) == len(set(paths))  # no phantom "x" or "data.test" problems
    assert _expected(bad) in info.value.errors


@needs_coordinator
def test_one_follower_too_many_names_the_flag_to_raise(tmp_path, job_dict):
    options = {"max_followers": 1, "lease_timeout_s": 60.0}
    cluster = LocalCluster(worker=False, coordinator_options=options, db_path=tmp_path / "c.db")
    with cluster, cluster.client(retry=RetryPolicy(max_elapsed_s=1.0)) as client:
        job = client.submit(job_dict)
        first = client.events(job.id, follow=True)
        next(first)  # the one slot is taken while this stream is open
        with pytest.raises(tc.ResourceExhausted) as info:
            next(client.events(job.id, follow=True))
        first.close()
    assert "--max-followers" in info.value.message
    assert info.value.violations == [
        QuotaViolation("--max-followers", "event streams open at once", 1)
    ]


class _Refuses(coordinator_pb2_grpc.CoordinatorServicer):
    """GetJob refuses with the status the test put in `status`."""

    status: grpc.Status

    def GetJob(self, request, context):
        context.abort_with_status(self.status)


@pytest.fixture
def refusing_server():
    servicer = _Refuses()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_too_many_problems_for_one_trailer_are_cut_with_a_note(refusing_server):
    """Details ride in a trailer that gRPC caps near 8 KiB; over it, the whole call would
    turn into RESOURCE_EXHAUSTED. A huge list arrives cut, saying how much was left out."""
    servicer, address = refusing_server
    problems = [FieldViolation(f"data.x{i}", "v\n" * 450 + "- a: b") for i in range(40)]
    message = "invalid job spec:" + "".join(f"\n- {p.path}: {p.message}" for p in problems)
    servicer.status = to_status(
        grpc.StatusCode.INVALID_ARGUMENT, message, field_violations=problems
    )
    # What the trailers cost on the wire: percent-encoded message, base64 details.
    details_bin = dict(servicer.status.trailing_metadata)["grpc-status-details-bin"]
    message_wire = sum(
        1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in servicer.status.details.encode()
    )
    assert message_wire + math.ceil(len(details_bin) / 3) * 4 <= TRAILER_BUDGET_BYTES
    with (
        Client(address, retry=RetryPolicy(max_elapsed_s=1.0)) as client,
        pytest.raises(tc.ValidationError) as info,
    ):
        client.get("job-1")
    errors = info.value.errors
    assert 1 < len(errors) < len(problems)
    assert errors[:-1] == [FieldError(p.path, p.message) for p in problems[: len(errors) - 1]]
    assert errors[-1].path == "" and "more problems" in errors[-1].message
    assert info.value.message.endswith("(cut: too long to send whole)")


def test_a_long_refusal_without_details_is_sent_whole(refusing_server):
    servicer, address = refusing_server
    servicer.status = to_status(grpc.StatusCode.FAILED_PRECONDITION, "x" * 6000)
    with (
        Client(address, retry=RetryPolicy(max_elapsed_s=1.0)) as client,
        pytest.raises(tc.FailedPrecondition) as info,
    ):
        client.get("job-1")
    assert info.value.message == "x" * 6000


def test_a_refusal_without_details_reads_as_none(refusing_server):
    servicer, address = refusing_server
    servicer.status = to_status(grpc.StatusCode.NOT_FOUND, "job job-1 not found")
    with grpc.insecure_channel(address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetJob(coordinator_pb2.GetJobRequest(job_id="job-1"), timeout=10)
    details = read_details(info.value)
    assert (details.field_violations, details.quota_violations) == ([], [])
    assert info.value.details() == "job job-1 not found"

"""Every gRPC status maps to one TunefleetError subclass; users never see a raw RpcError."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent import futures

import grpc
import pytest
from client_helpers import needs_coordinator, unused_port

import tunefleet.client as tc
from tunefleet.client import Client, RetryPolicy
from tunefleet.client.errors import from_rpc_error, parse_field_errors
from tunefleet.spec import FieldError
from tunefleet.v1 import coordinator_pb2_grpc

EXPECTED = {
    grpc.StatusCode.CANCELLED: tc.Cancelled,
    grpc.StatusCode.UNKNOWN: tc.InternalError,
    grpc.StatusCode.INVALID_ARGUMENT: tc.ValidationError,
    grpc.StatusCode.DEADLINE_EXCEEDED: tc.DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: tc.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: tc.AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: tc.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: tc.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: tc.FailedPrecondition,
    grpc.StatusCode.ABORTED: tc.Aborted,
    grpc.StatusCode.OUT_OF_RANGE: tc.ValidationError,
    grpc.StatusCode.UNIMPLEMENTED: tc.Unimplemented,
    grpc.StatusCode.INTERNAL: tc.InternalError,
    grpc.StatusCode.UNAVAILABLE: tc.Unavailable,
    grpc.StatusCode.DATA_LOSS: tc.InternalError,
    grpc.StatusCode.UNAUTHENTICATED: tc.Unauthenticated,
}


class AbortWithRequestedCode(coordinator_pb2_grpc.CoordinatorServicer):
    """GetJob("NOT_FOUND") aborts with NOT_FOUND, etc.: real RpcErrors for every code."""

    def GetJob(self, request, context):
        code = grpc.StatusCode[request.job_id]
        details = (
            "invalid job spec:\n- a.b: bad value\n- c: no: colon"
            if code in (grpc.StatusCode.INVALID_ARGUMENT,)
            else f"server says {code.name}"
        )
        context.abort(code, details)


@pytest.fixture(scope="module")
def aborting_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(AbortWithRequestedCode(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_every_status_code_has_a_mapping():
    assert set(EXPECTED) | {grpc.StatusCode.OK} == set(grpc.StatusCode)


@pytest.mark.parametrize("code", list(EXPECTED), ids=lambda c: c.name)
def test_real_rpc_errors_map_to_the_tree(aborting_server, code):
    # A one-try budget: UNAVAILABLE is retried, and we only want the mapping here.
    client = Client(aborting_server, retry=RetryPolicy(max_elapsed_s=0.0))
    with client, pytest.raises(tc.TunefleetError) as info:
        client.get(code.name)
    err = info.value
    assert type(err) is EXPECTED[code]
    assert not isinstance(err, grpc.RpcError)
    assert err.code == code.name
    assert err.target == aborting_server
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert err.errors == [FieldError("a.b", "bad value"), FieldError("c", "no: colon")]
    elif code is grpc.StatusCode.UNAVAILABLE:
        assert f"cannot reach coordinator at {aborting_server}" in str(err)
    else:
        assert f"server says {code.name}" in str(err)


def test_errors_are_also_the_matching_builtin_exceptions():
    assert issubclass(tc.ValidationError, ValueError)
    assert issubclass(tc.NotFound, LookupError)
    assert issubclass(tc.DeadlineExceeded, TimeoutError)
    assert issubclass(tc.Unavailable, ConnectionError)
    for cls in set(EXPECTED.values()) | {tc.JobFailed}:
        assert issubclass(cls, tc.TunefleetError)


def test_parse_field_errors_splits_at_the_first_colon_space():
    text = "invalid job spec in x.yaml:\n- model.name: required: a hub id\n-  not a row\nfoo"
    assert parse_field_errors(text) == [
        FieldError("model.name", "required: a hub id"),
        FieldError("", " not a row"),
    ]


def test_from_rpc_error_without_a_status_is_internal():
    class Weird(grpc.RpcError):
        pass

    err = from_rpc_error(Weird("boom"))
    assert isinstance(err, tc.InternalError)


def test_unavailable_after_bounded_retries_on_a_closed_port():
    port = unused_port()
    retry = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, max_elapsed_s=1.0)
    with Client(f"127.0.0.1:{port}", retry=retry, timeout=2.0) as client:
        start = time.monotonic()
        with pytest.raises(tc.Unavailable) as info:
            client.get("job-1")
        elapsed = time.monotonic() - start
    assert 0.5 < elapsed < 3.0, elapsed  # it did retry, and it gave up on time
    assert f"cannot reach coordinator at 127.0.0.1:{port}" in str(info.value)


def test_event_stream_on_a_closed_port_gives_up_too():
    port = unused_port()
    retry = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, stream_max_elapsed_s=1.0)
    with Client(f"127.0.0.1:{port}", retry=retry) as client:
        start = time.monotonic()
        with pytest.raises(tc.Unavailable):
            list(client.events("job-1"))
    assert time.monotonic() - start < 3.0


@needs_coordinator
def test_real_coordinator_not_found_and_invalid_spec(cluster, job_dict):
    from tunefleet.spec import spec_from_dict
    from tunefleet.v1 import coordinator_pb2

    with cluster.client() as client:
        with pytest.raises(tc.NotFound, match="job-nope"):
            client.get("job-nope")
        # The coordinator checks the schema (not the files, the workers'): a URL of an
        # unsupported scheme, sent past the local check, gets its answer.
        bad = spec_from_dict({**job_dict, "data": {"source": "csv", "train": "ftp://h/t.csv"}})
        with pytest.raises(tc.ValidationError) as info:
            client._unary(client._stub.SubmitJob, coordinator_pb2.SubmitJobRequest(spec=bad))
    assert info.value.code == "INVALID_ARGUMENT"
    assert [e.path for e in info.value.errors] == ["data.train"]


@needs_coordinator
def test_local_validation_gives_the_same_errors_as_the_coordinator(cluster, job_dict):
    bad = {**job_dict, "optimizer": {"name": "rmsprop"}, "train": {"epochs": 0}}
    with cluster.client() as client:
        with pytest.raises(tc.ValidationError) as local:
            client.submit(bad)
        assert local.value.code is None  # never reached the coordinator
        # The same spec sent as-is (bypassing the SDK's check) gets the same list back.
        from tunefleet.spec import spec_from_dict
        from tunefleet.v1 import coordinator_pb2

        request = coordinator_pb2.SubmitJobRequest(spec=spec_from_dict(bad))
        with pytest.raises(tc.ValidationError) as remote:
            client._unary(client._stub.SubmitJob, request)
    assert local.value.errors == remote.value.errors
    assert {e.path for e in local.value.errors} == {"optimizer.name", "train.epochs"}


def test_importing_the_sdk_does_not_import_torch():
    code = "import sys, tunefleet.client, tunefleet.client.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

"""Fault 8: callers without the right to a call are refused -- unauthenticated, wrong role
and another user's job, each over a unary and a streaming RPC -- against a real coordinator
with a tokens file, and nothing they asked for happens."""

from __future__ import annotations

import json

import grpc

from tunefleet.coordinator import start_server
from tunefleet.coordinator.auth import TokenTable, hash_token
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2, spec_pb2

TOKENS = {
    "alice": ("user", "alice-fault8-token-0123456789"),
    "mallory": ("user", "mallory-fault8-token-012345678"),
    "worker-1": ("worker", "worker-fault8-token-0123456789"),
}


def _code(fn) -> grpc.StatusCode | None:
    try:
        fn()
    except grpc.RpcError as e:
        return e.code()
    return None


def test_auth_refusals(tmp_path):
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(
        json.dumps(
            [
                {"name": name, "role": role, "token_sha256": hash_token(token)}
                for name, (role, token) in TOKENS.items()
            ]
        )
    )
    server = start_server(
        "127.0.0.1:0",
        tmp_path / "coordinator.db",
        check_paths=False,
        tokens=TokenTable.from_file(tokens_file),
    )
    channel = grpc.insecure_channel(server.address)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)

    def as_(name: str | None):
        return (("authorization", f"Bearer {TOKENS[name][1]}"),) if name else ()

    try:
        spec = spec_pb2.JobSpec(
            name="fault8",
            model=spec_pb2.ModelSpec(source="hf", name="/models/bert"),
            data=spec_pb2.DataSpec(source="csv", train="/data/train.csv"),
        )
        job = stub.SubmitJob(
            coordinator_pb2.SubmitJobRequest(spec=spec), metadata=as_("alice"), timeout=10
        )

        def stream(who):
            request = coordinator_pb2.StreamEventsRequest(job_id=job.id, follow=True)
            return list(stub.StreamEvents(request, metadata=as_(who), timeout=10))

        def cancel(who):
            request = coordinator_pb2.CancelJobRequest(job_id=job.id)
            return stub.CancelJob(request, metadata=as_(who), timeout=10)

        def register(who):
            request = coordinator_pb2.RegisterWorkerRequest(worker_id="rogue")
            return stub.RegisterWorker(request, metadata=as_(who), timeout=10)

        cases = [
            ("unauthenticated unary (CancelJob)", lambda: cancel(None), "UNAUTHENTICATED"),
            ("unauthenticated streaming (StreamEvents)", lambda: stream(None), "UNAUTHENTICATED"),
            (
                "wrong role unary (user RegisterWorker)",
                lambda: register("alice"),
                "PERMISSION_DENIED",
            ),
            (
                "wrong role streaming (worker StreamEvents)",
                lambda: stream("worker-1"),
                "PERMISSION_DENIED",
            ),
            ("other user unary (CancelJob)", lambda: cancel("mallory"), "NOT_FOUND"),
            ("other user streaming (StreamEvents)", lambda: stream("mallory"), "NOT_FOUND"),
        ]
        results = [(what, _code(fn), expected) for what, fn, expected in cases]
        refused = sum(1 for _, code, expected in results if code and code.name == expected)
        print(
            f"auth: {refused}/{len(cases)} unauthenticated, wrong-role and other-user calls refused"
        )
        wrong = [
            (what, code, expected)
            for what, code, expected in results
            if not code or code.name != expected
        ]
        assert not wrong, wrong
        # Nothing they asked for happened: the job is still alice's and still queued, and
        # no worker was registered.
        after = stub.GetJob(
            coordinator_pb2.GetJobRequest(job_id=job.id), metadata=as_("alice"), timeout=10
        )
        assert after.state == job_pb2.QUEUED and not after.cancel_requested
        assert after.submitter == "alice"
        assert server.scheduler.list_workers() == []
    finally:
        channel.close()
        server.stop(grace=0)

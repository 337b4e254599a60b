"""Tokens and roles: who may call what, and whose jobs they see. All against a real
coordinator on 127.0.0.1 with a tokens file; nothing of ours is mocked."""

from __future__ import annotations

import logging

import grpc
import pytest
from security_helpers import TOKENS, Caller, code_of, make_spec

from tunefleet.client import Client, NotFound, PermissionDenied, Unauthenticated
from tunefleet.client.client import RetryPolicy
from tunefleet.coordinator import auth
from tunefleet.v1 import coordinator_pb2

REQ = coordinator_pb2
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


def test_every_rpc_has_a_role_decision():
    methods = {m.name for m in REQ.DESCRIPTOR.services_by_name["Coordinator"].methods}
    classified = auth.USER_METHODS | auth.WORKER_METHODS | auth.ADMIN_ONLY_METHODS
    assert methods - classified == set(), (
        "new RPCs are admin-only until listed in coordinator/auth.py USER_METHODS, "
        "WORKER_METHODS or ADMIN_ONLY_METHODS; decide and add them"
    )
    assert not auth.USER_METHODS & auth.WORKER_METHODS


@pytest.mark.parametrize("who", ["anonymous", "forger"])
def test_calls_without_a_valid_token_are_unauthenticated(callers, who):
    alice_job = callers["alice"].submit()
    caller = callers[who]
    assert code_of(lambda: caller.submit()) == UNAUTHENTICATED
    assert code_of(lambda: caller.call("GetJob", REQ.GetJobRequest(job_id=alice_job.id))) == (
        UNAUTHENTICATED
    )
    assert code_of(lambda: caller.call("ListJobs", REQ.ListJobsRequest())) == UNAUTHENTICATED
    assert code_of(lambda: caller.stream(alice_job.id)) == UNAUTHENTICATED  # streaming too
    register = REQ.RegisterWorkerRequest(worker_id="w-evil")
    assert code_of(lambda: caller.call("RegisterWorker", register)) == UNAUTHENTICATED


def test_malformed_authorization_is_unauthenticated(authed):
    channel = grpc.insecure_channel(authed.address)
    stub = channel.unary_unary(
        "/tunefleet.v1.Coordinator/ListJobs",
        request_serializer=REQ.ListJobsRequest.SerializeToString,
        response_deserializer=REQ.ListJobsResponse.FromString,
    )
    for value in (f"Basic {TOKENS['root']}", TOKENS["root"], "Bearer", "Bearer  "):
        with pytest.raises(grpc.RpcError) as e:
            stub(REQ.ListJobsRequest(), metadata=(("authorization", value),), timeout=10)
        assert e.value.code() == UNAUTHENTICATED, value
    channel.close()


def test_roles_are_enforced_for_unary_and_streaming_calls(callers):
    job = callers["alice"].submit()
    user, worker = callers["alice"], callers["worker-1"]
    # A user cannot act as a worker...
    for method, request in [
        ("RegisterWorker", REQ.RegisterWorkerRequest(worker_id="w-fake")),
        ("Heartbeat", REQ.HeartbeatRequest(worker_id="w-fake")),
        ("AcquireJob", REQ.AcquireJobRequest(worker_id="w-fake")),
        ("ReportEvents", REQ.ReportEventsRequest(worker_id="w", job_id=job.id, attempt=1)),
        ("FinishJob", REQ.FinishJobRequest(worker_id="w", job_id=job.id, attempt=1)),
    ]:
        assert code_of(lambda m=method, r=request: user.call(m, r)) == PERMISSION_DENIED, method
    # ...and a worker cannot act as a user, streaming included.
    assert code_of(lambda: worker.submit()) == PERMISSION_DENIED
    assert code_of(lambda: worker.call("ListJobs", REQ.ListJobsRequest())) == PERMISSION_DENIED
    assert code_of(lambda: worker.stream(job.id)) == PERMISSION_DENIED
    assert code_of(lambda: worker.call("CancelJob", REQ.CancelJobRequest(job_id=job.id))) == (
        PERMISSION_DENIED
    )
    # The worker's own RPCs work.
    response = worker.call("RegisterWorker", REQ.RegisterWorkerRequest(worker_id="w-1"))
    assert response.worker_id == "w-1"
    # Draining takes a machine out of the fleet: admins only.
    drain = REQ.DrainWorkerRequest(worker_id="w-1")
    assert code_of(lambda: user.call("DrainWorker", drain)) == PERMISSION_DENIED
    assert code_of(lambda: worker.call("DrainWorker", drain)) == PERMISSION_DENIED
    # The admin may do everything.
    admin = callers["root"]
    assert admin.call("RegisterWorker", REQ.RegisterWorkerRequest(worker_id="w-2")).worker_id
    assert admin.call("DrainWorker", REQ.DrainWorkerRequest(worker_id="w-2")).state == (
        REQ.DRAINING
    )
    assert code_of(lambda: admin.call("DrainWorker", REQ.DrainWorkerRequest())) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert [e.seq for e in admin.stream(job.id)] == [1]


def test_users_see_follow_and_cancel_only_their_own_jobs(callers):
    alice, bob, admin = callers["alice"], callers["bob"], callers["root"]
    job = alice.submit(make_spec("alices"))
    assert job.submitter == "alice"
    bobs = bob.submit(make_spec("bobs"))
    assert bobs.submitter == "bob"

    def refusal(fn):
        with pytest.raises(grpc.RpcError) as e:
            fn()
        return e.value.code(), e.value.details()

    # Another user's job answers exactly like a job that does not exist.
    missing = refusal(lambda: bob.call("GetJob", REQ.GetJobRequest(job_id="job-00000000")))
    assert missing[0] == grpc.StatusCode.NOT_FOUND
    theirs = refusal(lambda: bob.call("GetJob", REQ.GetJobRequest(job_id=job.id)))
    assert theirs == (grpc.StatusCode.NOT_FOUND, missing[1].replace("job-00000000", job.id))
    assert refusal(lambda: bob.stream(job.id))[0] == grpc.StatusCode.NOT_FOUND
    assert refusal(lambda: bob.stream(job.id, follow=True))[0] == grpc.StatusCode.NOT_FOUND
    cancel = REQ.CancelJobRequest(job_id=job.id)
    assert refusal(lambda: bob.call("CancelJob", cancel))[0] == grpc.StatusCode.NOT_FOUND
    assert alice.call("GetJob", REQ.GetJobRequest(job_id=job.id)).state == 1  # still QUEUED

    assert [j.id for j in bob.call("ListJobs", REQ.ListJobsRequest()).jobs] == [bobs.id]
    assert [j.id for j in alice.call("ListJobs", REQ.ListJobsRequest()).jobs] == [job.id]
    assert {j.id for j in admin.call("ListJobs", REQ.ListJobsRequest()).jobs} == {job.id, bobs.id}

    # Starting from another user's model is refused as if that job did not exist.
    chained = make_spec("steal", source="job", job=job.id, name="")
    code, details = refusal(lambda: bob.submit(chained))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"- model.job: job {job.id} not found" in details
    assert alice.submit(make_spec("mine", source="job", job=job.id, name="")).submitter == "alice"

    # One user's idempotency key never returns another user's job.
    first = alice.submit(make_spec("a"), key="same-key")
    assert bob.submit(make_spec("b"), key="same-key").id != first.id
    assert alice.submit(make_spec("a"), key="same-key").id == first.id

    # The admin sees, follows and cancels anyone's job.
    assert [e.seq for e in admin.stream(job.id)] == [1]
    assert admin.call("CancelJob", cancel).state == 6  # CANCELLED


def test_workers_list_hides_other_users_job_ids(callers):
    alice, bob, worker = callers["alice"], callers["bob"], callers["worker-1"]
    job = alice.submit()
    worker.call("RegisterWorker", REQ.RegisterWorkerRequest(worker_id="w-1"))
    assignment = worker.call("AcquireJob", REQ.AcquireJobRequest(worker_id="w-1", wait_seconds=5))
    assert assignment.assignment.job.id == job.id
    listed = {
        w.id: list(w.job_ids) for w in alice.call("ListWorkers", REQ.ListWorkersRequest()).workers
    }
    assert listed == {"w-1": [job.id]}
    listed = {
        w.id: list(w.job_ids) for w in bob.call("ListWorkers", REQ.ListWorkersRequest()).workers
    }
    assert listed == {"w-1": []}


def test_sdk_maps_refusals_to_its_own_errors(authed):
    quick = RetryPolicy(max_elapsed_s=1.0)
    with Client(authed.address, retry=quick, security=_no_token()) as anonymous:
        with pytest.raises(Unauthenticated, match="authentication required"):
            anonymous.list()
        with pytest.raises(Unauthenticated):
            list(anonymous.events("job-00000000", follow=False))
    worker = Client(authed.address, token=TOKENS["worker-1"], retry=quick)
    with worker, pytest.raises(PermissionDenied, match="may not call ListJobs"):
        worker.list()
    with Client(authed.address, token=TOKENS["alice"]) as alice:
        handle = alice.submit(
            {
                "name": "sdk",
                "model": {"source": "hf", "name": "/m"},
                "data": {"source": "csv", "train": "/t.csv"},
            },
            check_paths=False,
        )
        assert handle.get().submitter == "alice"
        assert [e.seq for e in alice.events(handle.id, follow=False)] == [1]
    with Client(authed.address, token=TOKENS["bob"]) as bob:
        with pytest.raises(NotFound):
            bob.get(handle.id)
        with pytest.raises(NotFound):
            list(bob.events(handle.id, follow=True, timeout=5))


def test_token_from_the_environment(authed, monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFLEET_TOKEN", TOKENS["alice"])
    with Client(authed.address) as client:
        assert client.list() == []
    monkeypatch.delenv("TUNEFLEET_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(TOKENS["bob"] + "\n")
    monkeypatch.setenv("TUNEFLEET_TOKEN_FILE", str(token_file))
    with Client(authed.address) as client:
        job = client.submit(
            {
                "name": "env",
                "model": {"source": "hf", "name": "/m"},
                "data": {"source": "csv", "train": "/t.csv"},
            },
            check_paths=False,
        )
        assert job.get().submitter == "bob"
    assert "bob-token" not in repr(client) + repr(client.security)


def test_health_checks_need_no_token(authed):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(authed.address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_tokens_never_reach_the_logs(start, tokens_file, caplog):
    caplog.set_level(logging.DEBUG)
    server = start(tokens=auth.TokenTable.from_file(tokens_file))
    callers = [Caller(server.address, t) for t in TOKENS.values()]
    wrong = "wrong-token-that-must-not-be-logged-42"
    callers.append(Caller(server.address, wrong))
    for caller in callers:
        for fn in (
            lambda c=caller: c.submit(),
            lambda c=caller: c.call("ListJobs", REQ.ListJobsRequest()),
            lambda c=caller: c.call("RegisterWorker", REQ.RegisterWorkerRequest(worker_id="w")),
            lambda c=caller: c.stream("job-00000000"),
        ):
            try:
                fn()
            except grpc.RpcError as e:
                assert wrong not in (e.details() or "")
                assert not any(t in (e.details() or "") for t in TOKENS.values())
        caller.close()
    server.stop(grace=0)
    logged = caplog.text
    assert "refused" in logged and "unknown token" in logged  # the refusals were logged...
    for token in [*TOKENS.values(), wrong]:
        assert token not in logged  # ...but no token was
        assert auth.hash_token(token) not in logged


def test_tokens_file_errors_never_quote_tokens(tmp_path):
    secret = "a-plaintext-token-in-a-bad-file"
    bad = [
        f'[{{"name": "x", "role": "superuser", "token": "{secret}"}}]',
        f'[{{"name": "x", "role": "user", "token": "{secret}", "token_sha256": "ab"}}]',
        f'[{{"name": "x", "role": "user", "token": "{secret}"}}, '
        f'{{"name": "y", "role": "user", "token": "{secret}"}}]',
        f"- name: x\n  role: user\n  token: {secret}\n   bad: [indent",
        f'[{{"name": "x", "role": "user", "token": "{secret}", "extra": 1}}]',
    ]
    for text in bad:
        with pytest.raises(auth.TokensFileError) as e:
            auth.TokenTable.from_text(text)
        assert secret not in str(e.value), str(e.value)
    with pytest.raises(auth.TokensFileError, match="at least 16"):
        auth.TokenTable.from_text('[{"name": "x", "role": "user", "token": "short"}]')
    with pytest.raises(auth.TokensFileError, match="no tokens"):
        auth.TokenTable.from_text("[]")
    table = auth.TokenTable.from_text(f'[{{"name": "x", "role": "user", "token": "{secret}"}}]')
    assert secret not in repr(table)
    assert table.authenticate(secret) == auth.Principal("x", auth.Role.USER)
    assert table.authenticate(secret + "x") is None


def test_redact_filter_scrubs_bearer_tokens():
    record = logging.LogRecord(
        "grpc", logging.WARNING, __file__, 1, "metadata %s", ("authorization: Bearer s3cr3t",), None
    )
    auth.RedactBearer().filter(record)
    assert record.getMessage() == "metadata authorization: Bearer [redacted]"


def _no_token():
    from tunefleet.transport import ChannelSecurity

    return ChannelSecurity()


def test_databases_from_before_submitters_gain_the_column(tmp_path):
    import sqlite3

    from tunefleet.coordinator.store import JobStore

    store = JobStore(tmp_path / "old.db")
    store.insert_job("job-1", make_spec(), reason="submitted")
    store.close()
    with sqlite3.connect(tmp_path / "old.db") as db:  # as written by the first release
        db.execute("DROP INDEX jobs_by_submitter")  # it came with fair placement, later
        db.execute("ALTER TABLE jobs DROP COLUMN submitter")
    store = JobStore(tmp_path / "old.db")
    try:
        assert store.get_job("job-1").submitter == ""
        store.insert_job("job-2", make_spec(), reason="submitted", submitter="alice")
        assert [j.id for j in store.list_jobs(submitter="alice")] == ["job-2"]
    finally:
        store.close()

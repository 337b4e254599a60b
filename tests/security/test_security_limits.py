"""Safe defaults (loopback unless TLS + tokens or --insecure) and resource limits
(message size, streams, keepalive agreement, slow followers)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import grpc
import pytest
from security_helpers import RPC_TIMEOUT, make_spec

from tunefleet import transport
from tunefleet.client import client as sdk
from tunefleet.client.cli import main as ftctl
from tunefleet.coordinator import server as coordinator_server
from tunefleet.coordinator.auth import TokenTable
from tunefleet.coordinator.event_bus import EventBus
from tunefleet.coordinator.server import ServerTls
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2
from tunefleet.worker import daemon as worker_daemon


def test_without_tls_and_tokens_only_loopback_is_served(start, pki, tokens_file, caplog):
    for listen in ("0.0.0.0:0", "[::]:0", ":0"):
        with pytest.raises(ValueError, match="refusing to listen .* without TLS and tokens"):
            start(listen)
    tokens = TokenTable.from_file(tokens_file)
    with pytest.raises(ValueError, match="without TLS"):
        start("0.0.0.0:0", tokens=tokens)  # tokens alone would cross the network in clear
    with pytest.raises(ValueError, match="without tokens"):
        start("0.0.0.0:0", tls=ServerTls(pki.server_cert, pki.server_key))
    for listen in ("127.0.0.1:0", "localhost:0", "[::1]:0"):
        try:
            start(listen).stop(grace=0)
        except RuntimeError as e:  # no IPv6 on this machine
            assert "::1" in listen, e
    # Both given: any address is fine, without a warning.
    start("0.0.0.0:0", tls=ServerTls(pki.server_cert, pki.server_key), tokens=tokens)
    # --insecure opens it up, loudly.
    caplog.set_level(logging.WARNING)
    server = start("0.0.0.0:0", insecure=True)
    assert server.port > 0
    assert "without TLS and tokens (--insecure)" in caplog.text


def test_ftctl_server_refuses_a_public_address_without_tls_and_tokens(tmp_path, capsys):
    code = ftctl(["server", "--listen", "0.0.0.0:0", "--db", str(tmp_path / "db")])
    assert code == 1
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0" in err and "--insecure" in err
    code = ftctl(["up", "--listen", "0.0.0.0:0", "--db", str(tmp_path / "db")])
    assert code == 1
    assert "loopback" in capsys.readouterr().err


def test_keepalive_settings_agree_so_pings_never_cause_goaway():
    """Both ends' options live in tunefleet.transport; this checks they agree there."""
    server = dict(transport.SERVER_OPTIONS)
    min_interval = server["grpc.http2.min_recv_ping_interval_without_data_ms"]
    assert server["grpc.http2.max_ping_strikes"] > 0  # a ping flood is cut off...
    for side in (dict(transport.SDK_CHANNEL_OPTIONS), dict(transport.WORKER_CHANNEL_OPTIONS)):
        # ...but our own clients never ping faster than the coordinator accepts,
        assert side["grpc.keepalive_time_ms"] >= min_interval
        # and pinging an idle connection is only done where the coordinator permits it.
        if side.get("grpc.keepalive_permit_without_calls"):
            assert server["grpc.keepalive_permit_without_calls"] == 1
        assert side["grpc.max_receive_message_length"] >= server["grpc.max_send_message_length"]
    assert server["grpc.max_concurrent_streams"] > 0
    assert server["grpc.max_receive_message_length"] <= 64 * 1024 * 1024


def test_every_side_uses_the_shared_options():
    """The coordinator, the SDK and the worker take their options from tunefleet.transport
    instead of keeping copies (which is how they used to drift)."""
    assert coordinator_server.SERVER_OPTIONS is transport.SERVER_OPTIONS
    assert sdk.SDK_CHANNEL_OPTIONS is transport.SDK_CHANNEL_OPTIONS
    assert worker_daemon.WORKER_CHANNEL_OPTIONS is transport.WORKER_CHANNEL_OPTIONS


def test_messages_over_the_limit_are_refused(start):
    server = start()
    big = make_spec("x" * (65 * 1024 * 1024))
    with grpc.insecure_channel(
        server.address, options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=big), timeout=RPC_TIMEOUT)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ListJobs(coordinator_pb2.ListJobsRequest(), timeout=RPC_TIMEOUT).jobs == []


def test_a_follower_that_stops_reading_holds_no_queue(start):
    """A stalled follower costs one thread and one in-flight message, not a buffer: the
    coordinator stays responsive, and the follower later gets every event, in order."""
    server = start()
    with grpc.insecure_channel(server.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        job = stub.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=make_spec()), timeout=10)
        stub.RegisterWorker(coordinator_pb2.RegisterWorkerRequest(worker_id="w"), timeout=10)
        acquired = stub.AcquireJob(
            coordinator_pb2.AcquireJobRequest(worker_id="w", wait_seconds=5), timeout=10
        )
        assert acquired.assignment.job.id == job.id
        follow = stub.StreamEvents(
            coordinator_pb2.StreamEventsRequest(job_id=job.id, follow=True), timeout=60
        )
        first = next(follow)  # the stream is open; now stop reading it
        assert first.seq == 1
        payload = "x" * 2000
        for batch in range(20):
            events = [
                job_pb2.Event(log=job_pb2.LogLine(level="info", message=f"{batch}-{i} {payload}"))
                for i in range(100)
            ]
            stub.ReportEvents(
                coordinator_pb2.ReportEventsRequest(
                    worker_id="w", job_id=job.id, attempt=1, events=events
                ),
                timeout=10,
            )
        started = time.monotonic()
        stub.GetJob(coordinator_pb2.GetJobRequest(job_id=job.id), timeout=10)
        assert time.monotonic() - started < 2.0
        assert server.bus.follower_count(job.id) == 1
        stub.FinishJob(
            coordinator_pb2.FinishJobRequest(
                worker_id="w", job_id=job.id, attempt=1, state=job_pb2.SUCCEEDED
            ),
            timeout=10,
        )
        seqs = [first.seq] + [e.seq for e in follow]
        assert seqs == list(range(1, len(seqs) + 1))
        assert seqs[-1] == stub.GetJob(coordinator_pb2.GetJobRequest(job_id=job.id)).last_seq


def test_event_bus_keeps_no_events():
    bus = EventBus()
    with bus.subscribe("job") as subscription:
        for seq in range(1, 100_001):
            bus.publish("job", seq)
        # All a subscription keeps is the highest seq, however far behind its reader is.
        assert subscription.wait_beyond(99_999, timeout=0)
        assert not subscription.wait_beyond(100_000, timeout=0)
        assert set(vars(subscription)) <= {"_bus", "job_id", "_published_seq", "_closed", "_cond"}


def test_more_calls_than_the_cap_are_refused_not_queued(start):
    server = start(max_workers=2, max_concurrent_rpcs=2)
    with grpc.insecure_channel(server.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        stub.RegisterWorker(coordinator_pb2.RegisterWorkerRequest(worker_id="w"), timeout=10)
        polls = [
            stub.AcquireJob.future(
                coordinator_pb2.AcquireJobRequest(worker_id="w", wait_seconds=3), timeout=10
            )
            for _ in range(2)
        ]
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as e:
            stub.ListJobs(coordinator_pb2.ListJobsRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for poll in polls:
            poll.cancel()


def test_followers_cannot_starve_workers_and_one_too_many_is_refused(start):
    """Followers hold a thread each for as long as they follow. On the workers' pool, two
    of them here would queue every heartbeat until leases ran out; they have a pool of
    their own, and a follower beyond --max-followers is refused at once."""
    server = start(max_workers=2, max_followers=3)
    with grpc.insecure_channel(server.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        job = stub.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=make_spec()), timeout=10)
        stub.RegisterWorker(coordinator_pb2.RegisterWorkerRequest(worker_id="w"), timeout=10)

        def follow():
            stream = stub.StreamEventBatches(
                coordinator_pb2.StreamEventsRequest(job_id=job.id, follow=True), timeout=60
            )
            assert next(stream).events[0].seq == 1  # open and streaming
            return stream

        followers = [follow() for _ in range(3)]
        started = time.monotonic()
        assert stub.Heartbeat(coordinator_pb2.HeartbeatRequest(worker_id="w"), timeout=5).known
        acquired = stub.AcquireJob(
            coordinator_pb2.AcquireJobRequest(worker_id="w", wait_seconds=1), timeout=5
        )
        assert acquired.assignment.job.id == job.id
        assert time.monotonic() - started < 2.0

        with pytest.raises(grpc.RpcError) as e:
            follow()
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-followers" in e.value.details()

        followers.pop().cancel()  # a slot frees when a follower leaves
        deadline = time.monotonic() + 5
        while True:
            try:
                followers.append(follow())
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the slot never came back"
                time.sleep(0.05)
        for stream in followers:
            stream.cancel()


def test_max_followers_must_be_positive(start):
    with pytest.raises(ValueError, match="--max-followers must be at least 1"):
        start(max_followers=0)


def test_more_idle_workers_than_threads_do_not_delay_heartbeats(start):
    """Idle workers long-poll AcquireJob for seconds; with more of them than server
    threads, heartbeats used to queue behind the polls (at fleet scale, past the lease)."""
    server = start(max_workers=2)
    stop = threading.Event()

    def idle_worker(n: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
        with grpc.insecure_channel(server.address, options=options) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            stub.RegisterWorker(coordinator_pb2.RegisterWorkerRequest(worker_id=f"idle{n}"))
            while not stop.is_set():
                with contextlib.suppress(grpc.RpcError):
                    stub.AcquireJob(
                        coordinator_pb2.AcquireJobRequest(worker_id=f"idle{n}", wait_seconds=2),
                        timeout=10,
                    )

    pollers = [threading.Thread(target=idle_worker, args=(n,), daemon=True) for n in range(6)]
    for poller in pollers:
        poller.start()
    try:
        time.sleep(0.5)  # every poller is waiting
        with grpc.insecure_channel(server.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            stub.RegisterWorker(coordinator_pb2.RegisterWorkerRequest(worker_id="w"), timeout=10)
            slowest = 0.0
            for _ in range(8):
                started = time.monotonic()
                stub.Heartbeat(coordinator_pb2.HeartbeatRequest(worker_id="w"), timeout=10)
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.2)
        assert slowest < 0.5, f"a heartbeat took {slowest:.2f} s behind the long polls"
    finally:
        stop.set()
        for poller in pollers:
            poller.join(timeout=10)

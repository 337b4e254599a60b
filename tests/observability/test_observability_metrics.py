"""Prometheus metrics and the gRPC health service, against a real coordinator and real
WorkerDaemons (scripted training processes), scraped over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from coordinator_helpers import Client, Worker, make_spec, wait_for
from observability_helpers import metric, scrape
from worker_helpers import scripted_command

from tunefleet.coordinator import start_server
from tunefleet.coordinator.health import check
from tunefleet.coordinator.health import main as health_main
from tunefleet.v1 import coordinator_pb2, job_pb2
from tunefleet.worker import WorkerDaemon


class _Daemons:
    def __init__(self, address: str, root: Path):
        self.address, self.root = address, root
        self.running: list[tuple[WorkerDaemon, threading.Thread]] = []

    def start(self, worker_id: str, mode: str, gpus: int) -> WorkerDaemon:
        daemon = WorkerDaemon(
            self.address,
            artifacts_root=self.root / "artifacts",
            gpus=gpus,
            worker_id=worker_id,
            poll_s=0.3,
            command_factory=scripted_command(mode),
        )
        thread = threading.Thread(target=daemon.run, name=worker_id)
        thread.start()
        self.running.append((daemon, thread))
        return daemon

    def stop(self, daemon: WorkerDaemon) -> None:
        for d, thread in self.running:
            if d is daemon:
                d.stop()
                thread.join(timeout=20)

    def stop_all(self) -> None:
        for daemon, _ in self.running:
            self.stop(daemon)


@pytest.fixture
def daemons(tmp_path):
    holder: list[_Daemons] = []

    def make(address: str) -> _Daemons:
        holder.append(_Daemons(address, tmp_path))
        return holder[-1]

    yield make
    for d in holder:
        d.stop_all()


def _state(client: Client, job_id: str) -> int:
    return client.get(job_id).state


def test_metrics_show_jobs_queue_workers_gpus_and_rpcs(tmp_path, daemons):
    db = tmp_path / "coordinator.db"
    server = start_server(
        "127.0.0.1:0",
        db,
        heartbeat_interval_s=0.2,
        lease_timeout_s=1.5,
        check_paths=False,
        metrics_port=0,
    )
    client = Client(server.address)
    pool = daemons(server.address)
    try:
        # Two CPU jobs succeed on a CPU worker, which then stops (and is forgotten); another
        # registers and vanishes without a word (and is lost).
        cpu_worker = pool.start("w-cpu", "succeed", gpus=0)
        done = [client.submit(make_spec(f"cpu-{i}")).id for i in range(2)]
        for job_id in done:
            wait_for(lambda j=job_id: _state(client, j) == job_pb2.SUCCEEDED, timeout=20)
        pool.stop(cpu_worker)
        Worker(client.stub, "w-vanished")

        # A GPU worker runs a 1-GPU job that keeps going; a 4-GPU job cannot fit anywhere.
        pool.start("w-gpu", "hang", gpus=2)
        running = client.submit(make_spec("gpu-1", gpus=1)).id
        wait_for(lambda: _state(client, running) == job_pb2.RUNNING, timeout=20)
        queued = client.submit(make_spec("gpu-4", gpus=4)).id
        with pytest.raises(grpc.RpcError):
            client.get("job-doesnotexist")

        samples = wait_for(
            lambda: (
                (s := scrape(server.metrics.port))
                and metric(s, "tunefleet_workers", state="LOST") == 1
                and metric(s, "tunefleet_events_ingested_total", kind="report") == 3
                and s
            ),
            timeout=15,
            interval=0.2,
        )
        assert metric(samples, "tunefleet_jobs", state="SUCCEEDED") == 2
        assert metric(samples, "tunefleet_jobs", state="RUNNING") == 1
        assert metric(samples, "tunefleet_jobs", state="QUEUED") == 1
        assert metric(samples, "tunefleet_jobs", state="FAILED") == 0
        assert metric(samples, "tunefleet_queue_depth") == 1
        assert metric(samples, "tunefleet_queue_oldest_wait_seconds") > 0
        # Three jobs started training: the wait histogram counts each once.
        assert metric(samples, "tunefleet_queue_wait_seconds_count") == 3
        assert metric(samples, "tunefleet_queue_wait_seconds_bucket", le="+Inf") == 3
        assert metric(samples, "tunefleet_queue_wait_seconds_bucket", le="86400.0") == 3
        assert metric(samples, "tunefleet_workers", state="LIVE") == 1
        assert metric(samples, "tunefleet_gpus", state="free") == 1
        assert metric(samples, "tunefleet_gpus", state="used") == 1

        # What the coordinator did since it started: RPCs by method and code, events.
        coordinator = "tunefleet.v1.Coordinator"
        assert (
            metric(samples, "tunefleet_rpc_duration_seconds_count", service=coordinator, method="SubmitJob")
            == 4
        )  # fmt: skip
        assert (
            metric(samples, "tunefleet_rpc_handled_total", service=coordinator, method="GetJob", code="NOT_FOUND")
            == 1
        )  # fmt: skip
        # Each scripted success reports a freeze_plan report, a metrics event and logs.
        assert metric(samples, "tunefleet_events_ingested_total", kind="metrics") == 2
        assert metric(samples, "tunefleet_events_ingested_total", kind="report") == 3
        assert metric(samples, "tunefleet_events_ingested_total", kind="log") >= 4

        client.cancel(running)
        wait_for(lambda: _state(client, running) == job_pb2.CANCELLED, timeout=20)
        assert metric(scrape(server.metrics.port), "tunefleet_jobs", state="CANCELLED") == 1
    finally:
        pool.stop_all()
        client.channel.close()
        server.stop(grace=0)

    # A new coordinator on the same database reports the same state at once: the gauges
    # are read from the store, not counted in memory.
    again = start_server("127.0.0.1:0", db, check_paths=False, metrics_port=0)
    try:
        samples = scrape(again.metrics.port)
        assert metric(samples, "tunefleet_jobs", state="SUCCEEDED") == 2
        assert metric(samples, "tunefleet_jobs", state="CANCELLED") == 1
        assert metric(samples, "tunefleet_queue_depth") == 1
        assert queued and metric(samples, "tunefleet_queue_wait_seconds_count") == 3
        assert metric(samples, "tunefleet_events_ingested_total", kind="metrics") is None
    finally:
        again.stop(grace=0)


def test_a_worker_that_stops_is_forgotten_and_one_that_vanishes_is_lost(tmp_path, daemons):
    """Every routine stop (SIGTERM from systemd, Kubernetes or Slurm; a drain) left a LOST
    worker behind for ever: `ftctl workers` filled with them and the documented alert,
    tunefleet_workers{state="LOST"} > 0, fired after the first rollout and never cleared."""
    server = start_server(
        "127.0.0.1:0", tmp_path / "c.db", heartbeat_interval_s=0.2, lease_timeout_s=1.0,
        check_paths=False, metrics_port=0,
    )  # fmt: skip
    client = Client(server.address)
    pool = daemons(server.address)
    try:
        stopping = pool.start("w-stopping", "hang", gpus=0)
        running = client.submit(make_spec("running")).id
        wait_for(lambda: _state(client, running) == job_pb2.RUNNING, timeout=20)
        Worker(client.stub, "w-vanished")  # registers, then never heard from again
        pool.stop(stopping)  # SIGTERM's path: drain, hand back the job, exit

        def workers() -> dict:
            listed = client.stub.ListWorkers(coordinator_pb2.ListWorkersRequest(), timeout=10)
            return {w.id: w.state for w in listed.workers}

        wait_for(lambda: workers() == {"w-vanished": coordinator_pb2.LOST}, timeout=10)
        samples = scrape(server.metrics.port)
        assert metric(samples, "tunefleet_workers", state="LOST") == 1
        assert metric(samples, "tunefleet_workers", state="LIVE") == 0
        assert _state(client, running) == job_pb2.QUEUED  # handed back, not lost with it
    finally:
        pool.stop_all()
        client.channel.close()
        server.stop(grace=0)


def test_metrics_are_off_by_default_and_a_taken_port_is_an_error(tmp_path):
    with start_server("127.0.0.1:0", tmp_path / "a.db") as server:
        assert server.metrics.port is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            start_server("127.0.0.1:0", tmp_path / "b.db", metrics_port=port)
    # Nothing was left holding the database.
    with start_server("127.0.0.1:0", tmp_path / "b.db") as server:
        assert check(server.address) == "SERVING"


def test_health_service_for_probes(tmp_path, capsys):
    server = start_server("127.0.0.1:0", tmp_path / "c.db")
    try:
        assert check(server.address) == "SERVING"
        assert check(server.address, service="tunefleet.v1.Coordinator") == "SERVING"
        with pytest.raises(grpc.RpcError) as unknown:
            check(server.address, service="no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert health_main([server.address]) == 0
        assert "SERVING" in capsys.readouterr().out
    finally:
        server.stop(grace=0)
    assert health_main([server.address, "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_ftctl_server_serves_metrics_and_json_logs(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunefleet.client.cli",
            "server",
            "--listen=127.0.0.1:0",
            f"--db={tmp_path / 'coordinator.db'}",
            "--metrics-port=0",
            "--log-format=json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GRPC_VERBOSITY": "NONE"},
    )
    early = []  # the JSON log says where it listens; stdout stays empty (one JSON stream)
    try:
        while not any("coordinator listening on" in line for line in early):
            early.append(proc.stderr.readline())
            assert early[-1], f"the coordinator exited: {early}"
        text = "".join(early)
        address = re.search(r"coordinator listening on (127\.0\.0\.1:\d+)", text).group(1)
        port = int(re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", text).group(1))
        client = Client(address)
        spec = make_spec("via-cli")  # `ftctl server` checks that paths exist
        (tmp_path / "train.csv").write_text("text,label\na,b\n")
        spec.model.name = str(tmp_path)
        spec.data.train = spec.data.eval = str(tmp_path / "train.csv")
        client.submit(spec)
        client.channel.close()
        samples = scrape(port)
        assert metric(samples, "tunefleet_jobs", state="QUEUED") == 1
        assert check(address) == "SERVING"
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert stdout == ""
    records = [json.loads(line) for line in (text + stderr).splitlines() if line.strip()]
    assert records, "the coordinator logged nothing"
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    submitted = [r for r in records if "submitted" in r["message"]]
    assert submitted and submitted[0]["logger"] == "tunefleet.coordinator.scheduler"
    assert time.time() - 120 < _epoch(records[0]["time"]) <= time.time()


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339).timestamp()


def test_rpc_observer_counts_worker_calls(tmp_path):
    """ReportEvents refused for a wrong attempt is counted with its code, events are not."""
    with start_server("127.0.0.1:0", tmp_path / "d.db", check_paths=False, metrics_port=0) as s:
        channel = grpc.insecure_channel(s.address)
        from tunefleet.v1 import coordinator_pb2_grpc

        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        stub.RegisterWorker(coordinator_pb2.RegisterWorkerRequest(worker_id="w"), timeout=5)
        job = Client(s.address).submit(make_spec("x"))
        request = coordinator_pb2.ReportEventsRequest(
            worker_id="w",
            job_id=job.id,
            attempt=7,
            events=[job_pb2.Event(log=job_pb2.LogLine(message="hi"))],
        )
        with pytest.raises(grpc.RpcError):
            stub.ReportEvents(request, timeout=5)
        channel.close()
        samples = scrape(s.metrics.port)
    assert (
        metric(samples, "tunefleet_rpc_handled_total", service="tunefleet.v1.Coordinator", method="ReportEvents", code="FAILED_PRECONDITION")
        == 1
    )  # fmt: skip
    assert metric(samples, "tunefleet_events_ingested_total", kind="log") is None

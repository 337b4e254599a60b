"""WorkerDaemon against a real coordinator over gRPC; the training process is
scripted_engine.py, or the real `python -m tunefleet.worker` for the CLI test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from threading import Thread

import pytest
from coordinator_helpers import Client, Worker, make_spec, state_changes, wait_for
from worker_helpers import pid_alive, scripted_command

from tunefleet.coordinator import start_server
from tunefleet.v1 import coordinator_pb2, job_pb2
from tunefleet.worker import WorkerDaemon


def _wait_state(client: Client, job_id: str, state: int, timeout: float = 10.0) -> job_pb2.Job:
    wait_for(lambda: client.get(job_id).state == state, timeout=timeout)
    return client.get(job_id)


def _messages(events) -> list[str]:
    return [e.log.message for e in events if e.WhichOneof("kind") == "log"]


def test_daemon_runs_a_job_to_success(client, start_daemon, tmp_path):
    start_daemon("succeed", worker_id="w-ok")
    wait_for(lambda: "w-ok" in client.workers())
    job = client.submit(make_spec("ok"))

    events = client.events(job.id, follow=True, timeout=15)
    done = client.get(job.id)

    assert done.state == job_pb2.SUCCEEDED, done.reason
    out_dir = tmp_path / "artifacts" / job.id
    assert done.artifacts["model"] == str(out_dir / "model")
    assert done.summary["accuracy"] == pytest.approx(0.75)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [s for s, _ in state_changes(events)] == ["QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED"]
    assert _messages(events)[0].startswith("started on worker w-ok (pid ")
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds.count("metrics") == 1 and kinds.count("report") == 1
    assert all(e.attempt == 1 for e in events[1:])
    assert (out_dir / "spec.json").exists()
    assert (out_dir / "attempts" / "1" / "engine.log").exists()


def test_output_dir_from_the_spec_is_used(client, start_daemon, tmp_path):
    start_daemon("succeed")
    spec = make_spec("custom-out")
    spec.output.dir = str(tmp_path / "custom")
    job = client.submit(spec)

    done = _wait_state(client, job.id, job_pb2.SUCCEEDED)

    assert done.artifacts["model"] == str(tmp_path / "custom" / "model")


def test_failures_carry_the_engines_reason(client, start_daemon):
    start_daemon("crash")
    spec = make_spec("crashy")
    spec.train.max_restarts = 0
    job = client.submit(spec)

    done = _wait_state(client, job.id, job_pb2.FAILED)

    assert done.reason == (
        "training process exited with code 3: RuntimeError: boom "
        "(no restarts left: train.max_restarts is 0)"
    )
    assert "RuntimeError: boom" in _messages(client.events(job.id))


def test_a_crash_is_restarted_up_to_max_restarts(client, start_daemon):
    start_daemon("crash")
    spec = make_spec("crashy")
    spec.train.max_restarts = 1
    job = client.submit(spec)

    done = _wait_state(client, job.id, job_pb2.FAILED, timeout=15)

    assert (done.attempt, done.restarts) == (2, 1)
    reasons = [reason for state, reason in state_changes(client.events(job.id))]
    assert "restart 1 of 1 in 1 s: training process exited with code 3: RuntimeError: boom" in (
        reasons
    )


def test_invalid_input_is_not_retried(client, start_daemon):
    start_daemon("invalid")
    job = client.submit(make_spec("bad-input"))

    done = _wait_state(client, job.id, job_pb2.FAILED)

    assert (done.attempt, done.restarts) == (1, 0)
    assert done.reason == "data.train: no such file /data/train.csv"


def test_cancel_stops_the_running_job(client, start_daemon, tmp_path):
    start_daemon("hang", worker_id="w-cancel")
    job = client.submit(make_spec("long"))
    pid_file = tmp_path / "artifacts" / job.id / "grandchild.pid"
    wait_for(lambda: "training" in _messages(client.events(job.id)) and pid_file.exists(), 10)

    started = time.monotonic()
    client.cancel(job.id)
    done = _wait_state(client, job.id, job_pb2.CANCELLED)

    assert time.monotonic() - started < 5
    assert done.reason == "cancelled by user"
    wait_for(lambda: not pid_alive(int(pid_file.read_text())), timeout=5)
    # The worker is free again.
    wait_for(lambda: not client.workers()["w-cancel"].job_ids, timeout=5)


def test_stopping_the_daemon_drains_and_releases_its_job(client, coordinator, tmp_path):
    daemon = WorkerDaemon(
        coordinator.address,
        artifacts_root=tmp_path / "artifacts",
        gpus=0,
        worker_id="w-stop",
        poll_s=0.5,
        command_factory=scripted_command("preemptible"),
    )
    thread = Thread(target=daemon.run)
    thread.start()
    try:
        job = client.submit(make_spec("long"))
        wait_for(lambda: "training" in _messages(client.events(job.id)), timeout=10)
    finally:
        daemon.stop()
        thread.join(timeout=15)

    assert not thread.is_alive()
    events = client.events(job.id)
    assert "SIGTERM: checkpoint saved" in _messages(events)
    assert state_changes(events)[-1] == ("QUEUED", "worker w-stop is shutting down (drained)")
    assert (client.get(job.id).state, client.get(job.id).restarts) == (job_pb2.QUEUED, 0)


def test_a_job_requeued_elsewhere_is_killed_on_its_old_worker(client, start_daemon, tmp_path):
    """The coordinator gave the job to someone else (here: the worker registered again
    under its id, as after a restart): the next heartbeat tells the daemon, which kills the
    training process without reporting anything."""
    daemon = start_daemon("hang", worker_id="w-old")
    job = client.submit(make_spec("moved"))
    pid_file = tmp_path / "artifacts" / job.id / "grandchild.pid"
    wait_for(lambda: "training" in _messages(client.events(job.id)) and pid_file.exists(), 10)

    first_grandchild = int(pid_file.read_text())

    Worker(client.stub, "w-old")  # registers w-old again: its job is requeued

    wait_for(lambda: not pid_alive(first_grandchild), timeout=10)
    # The daemon, still alive, takes the requeued job as the next attempt.
    wait_for(lambda: client.get(job.id).attempt == 2, timeout=10)
    assert daemon.worker_id == "w-old"


def test_daemon_rides_out_a_coordinator_restart(tmp_path, start_daemon):
    db = tmp_path / "restart.db"
    first = start_server("127.0.0.1:0", db, heartbeat_interval_s=0.2, check_paths=False)
    port = first.port
    daemon = start_daemon("succeed", address=first.address, worker_id="w-steady")
    client = Client(first.address)
    try:
        wait_for(lambda: "w-steady" in client.workers())
        first.stop(grace=0)
        time.sleep(1.0)  # the daemon's polls and heartbeats fail meanwhile
        second = start_server(f"127.0.0.1:{port}", db, heartbeat_interval_s=0.2, check_paths=False)
        try:
            job = client.submit(make_spec("after-restart"))
            done = _wait_state(client, job.id, job_pb2.SUCCEEDED, timeout=15)
            assert done.worker_id == "w-steady"
            assert daemon.worker_id == "w-steady"
        finally:
            second.stop(grace=0)
    finally:
        client.close()


def test_worker_cli_takes_a_job_and_stops_on_sigterm(client, coordinator, tmp_path):
    """`python -m tunefleet.worker` for real, with the engine. The spec's files exist
    nowhere: the coordinator (schema check only) queues it, the worker checks its paths
    before starting the engine and fails the attempt at once, not retried, naming every
    problem with its field path (issue 15); SIGTERM then ends the worker cleanly."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunefleet.worker",
            "--coordinator",
            coordinator.address,
            "--artifacts",
            str(tmp_path / "artifacts"),
            "--gpus",
            "0",
            "--id",
            "w-cli",
            "--poll-s",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: "w-cli" in client.workers(), timeout=10)
        worker = client.workers()["w-cli"]
        assert worker.state == coordinator_pb2.LIVE and worker.resources.gpus == 0
        job = client.submit(make_spec("cli"))

        done = wait_for(
            lambda: (j := client.get(job.id)).state == job_pb2.FAILED and j, timeout=20
        )
        assert (done.attempt, done.restarts, done.worker_id) == (1, 0, "w-cli")
        assert done.reason == (
            "model.name: no such folder on worker w-cli: /models/tiny-bert; "
            "data.train: no such file on worker w-cli: /data/train.csv; "
            "data.eval: no such file on worker w-cli: /data/eval.csv"
        )
        assert not any("started on worker" in m for m in _messages(client.events(job.id)))

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        proc.stdout and proc.stdout.close()
    assert "registered with" in output, output

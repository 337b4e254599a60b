"""Structured logs: JSON lines with time/level/logger/message, and job_id/attempt where a
line is about a job, from the coordinator and the worker."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest
from coordinator_helpers import Client, make_spec, wait_for
from worker_helpers import scripted_command

from tunefleet.coordinator import start_server
from tunefleet.logging_setup import (
    JobContextFilter,
    JsonFormatter,
    configure_logging,
    current_job,
    job_log_context,
)
from tunefleet.v1 import job_pb2
from tunefleet.worker import WorkerDaemon


@pytest.fixture
def json_lines():
    """Captures every log record of the process as JSON lines (a handler on the root)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield lines
    root.removeHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_the_job_context(json_lines):
    log = logging.getLogger("tunefleet.test")
    log.info("outside")
    with job_log_context("job-12345678", attempt=2):
        assert current_job() == ("job-12345678", 2)
        log.warning("inside %s", "a job", extra={"worker_id": "w-1"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    log.info("explicit", extra={"job_id": "job-other"})
    assert current_job() == ("", 0)

    outside, inside, failed, explicit = json_lines()
    assert set(outside) == {"time", "level", "logger", "message"}
    assert outside["level"] == "info" and outside["logger"] == "tunefleet.test"
    assert datetime.fromisoformat(outside["time"]).utcoffset().total_seconds() == 0
    assert inside == {
        "time": inside["time"],
        "level": "warning",
        "logger": "tunefleet.test",
        "message": "inside a job",
        "job_id": "job-12345678",
        "attempt": 2,
        "worker_id": "w-1",
    }
    assert failed["job_id"] == "job-12345678" and "ValueError: boom" in failed["exception"]
    assert explicit["job_id"] == "job-other" and "attempt" not in explicit


def test_job_context_does_not_leak_into_other_threads(json_lines):
    seen = []
    with job_log_context("job-aaaaaaaa", 1):
        thread = threading.Thread(target=lambda: seen.append(current_job()))
        thread.start()
        thread.join()
    assert seen == [("", 0)]


def test_configure_logging_formats(capsys):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        stream = io.StringIO()
        configure_logging("DEBUG", "json", stream=stream)
        with job_log_context("job-bbbbbbbb", 1):
            logging.getLogger("x").debug("hello")
        assert json.loads(stream.getvalue())["job_id"] == "job-bbbbbbbb"
        stream = io.StringIO()
        configure_logging("INFO", "text", stream=stream)
        logging.getLogger("x").info("plain")
        assert stream.getvalue().rstrip().endswith("INFO x: plain")
        with pytest.raises(ValueError, match="text, json"):
            configure_logging("INFO", "xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_coordinator_and_worker_lines_name_the_job(tmp_path, json_lines):
    server = start_server(
        "127.0.0.1:0", tmp_path / "coordinator.db", heartbeat_interval_s=0.2, check_paths=False
    )
    daemon = WorkerDaemon(
        server.address,
        artifacts_root=tmp_path / "artifacts",
        gpus=0,
        worker_id="w-log",
        poll_s=0.3,
        command_factory=scripted_command("succeed"),
    )
    thread = threading.Thread(target=daemon.run)
    thread.start()
    client = Client(server.address)
    try:
        job = client.submit(make_spec("logged"))
        wait_for(lambda: client.get(job.id).state == job_pb2.SUCCEEDED, timeout=20)
        # Stopping mid-job logs "draining" from the stop thread, outside the job's context.
        wait_for(lambda: daemon.running_job_id is None, timeout=10)
    finally:
        daemon.stop()
        thread.join(timeout=20)
        client.channel.close()
        server.stop(grace=0)

    lines = json_lines()
    finished = [
        r
        for r in lines
        if r["logger"] == "tunefleet.coordinator.scheduler" and "SUCCEEDED" in r["message"]
    ]
    # Logged while serving the worker's FinishJob, whose request names the job.
    assert finished and finished[0]["job_id"] == job.id and finished[0]["attempt"] == 1
    worker = [
        r for r in lines if r["logger"] == "tunefleet.worker.daemon" and job.id in r["message"]
    ]
    untagged = [r["message"] for r in worker if r.get("job_id") != job.id or r.get("attempt") != 1]
    assert worker and not untagged
    registered = [r for r in lines if "registered with" in r["message"]]
    assert registered and "job_id" not in registered[0]


def test_worker_process_logs_json(tmp_path):
    with start_server("127.0.0.1:0", tmp_path / "c.db") as server:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunefleet.worker",
                "--coordinator",
                server.address,
                "--gpus=0",
                f"--artifacts={tmp_path / 'artifacts'}",
                "--log-format=json",
            ],
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            first = proc.stderr.readline()
            while "registered" not in first and time.monotonic() < deadline:
                first = proc.stderr.readline()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            _, rest = proc.communicate(timeout=20)
    records = [json.loads(line) for line in [first, *rest.splitlines()] if line.strip()]
    assert records[0]["logger"] == "tunefleet.worker.daemon"
    assert "registered with" in records[0]["message"]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)

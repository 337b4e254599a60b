"""Observability test fixtures: one real tiny training job shared by the TensorBoard, plot
and artifact tests, reading /metrics is in observability_helpers."""

from __future__ import annotations

import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# The worker and coordinator tests' helpers (scripted engine, specs, wait_for) serve here too.
_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("worker", "coordinator"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from jobfiles import write_text_job  # noqa: E402

from tunefleet.client import Client  # noqa: E402
from tunefleet.client.types import Job  # noqa: E402
from tunefleet.coordinator import CoordinatorServer, start_server  # noqa: E402
from tunefleet.worker import WorkerDaemon  # noqa: E402


@dataclass
class TrainedJob:
    server: CoordinatorServer
    job: Job
    out_dir: Path
    artifacts_uri: str
    events: list


@pytest.fixture(scope="session")
def trained_job(tmp_path_factory, tiny_bert, sentiment_data) -> TrainedJob:
    """A real tiny fine-tuning job, run by a WorkerDaemon (in a thread, so that memory://
    uploads are visible to the test process) through a real coordinator with metrics on."""
    root = tmp_path_factory.mktemp("observability")
    server = start_server(
        "127.0.0.1:0", root / "coordinator.db", heartbeat_interval_s=0.5, metrics_port=0
    )
    artifacts_uri = f"memory://tunefleet-tests/{uuid.uuid4().hex}"
    daemon = WorkerDaemon(
        server.address,
        artifacts_root=root / "artifacts",
        gpus=0,
        worker_id="obs-worker",
        poll_s=0.5,
        artifacts_uri=artifacts_uri,
    )
    thread = threading.Thread(target=daemon.run, name="obs-worker", daemon=True)
    thread.start()
    try:
        job_yaml = write_text_job(root, tiny_bert, sentiment_data, name="obs-tiny")
        spec = yaml.safe_load(job_yaml.read_text())
        spec["data"]["limit_train"] = 64  # 2 epochs of 4 steps, 2 evaluations
        job_yaml.write_text(yaml.safe_dump(spec))
        with Client(server.address) as client:
            handle = client.submit(job_yaml)
            job = handle.wait(timeout=180)
            events = list(client.events(job.id, 0, False))
    finally:
        # The job is over: the worker is not needed any more, the coordinator is.
        daemon.stop()
        thread.join(timeout=30)
    yield TrainedJob(server, job, root / "artifacts" / job.id, artifacts_uri, events)
    server.stop(grace=0)

"""Client test fixtures: a real coordinator on port 0, valid and invalid jobs, and a
scripted worker that speaks the worker half of the real gRPC API (register, acquire,
report, finish) so a test drives a job through its states without torch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from client_helpers import ScriptedWorker, coordinator_available


@pytest.fixture
def train_csv(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    path.write_text("text,label\ngood movie,pos\nbad movie,neg\n")
    return path


@pytest.fixture
def job_dict(train_csv: Path) -> dict:
    """A valid job (never trained here: the scripted worker only pretends)."""
    return {
        "name": "client-test",
        "model": {"source": "hf", "name": "prajjwal1/bert-tiny"},
        "data": {"source": "csv", "train": str(train_csv)},
        "train": {"epochs": 1},
    }


@pytest.fixture
def job_yaml(tmp_path: Path, job_dict: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**job_dict, "data": {"source": "csv", "train": "train.csv"}}))
    return path


@pytest.fixture
def bad_yaml(tmp_path: Path) -> Path:
    """Five independent problems; every one must be reported."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\n"
        "model: {source: hf}\n"
        "data: {source: csv, train: missing.csv}\n"
        "optimizer: {name: rmsprop, lr: -1}\n"
        "train: {epochs: 0}\n"
    )
    return path


@pytest.fixture
def cluster():
    """A real coordinator (no worker) on a free port with a temporary database."""
    if not coordinator_available():
        pytest.skip("tunefleet.coordinator.start_server is not importable yet")
    from tunefleet.client import LocalCluster

    with LocalCluster(worker=False, coordinator_options={"lease_timeout_s": 60.0}) as c:
        yield c


@pytest.fixture
def scripted_worker(cluster):
    worker = ScriptedWorker(cluster.address)
    yield worker
    worker.close()

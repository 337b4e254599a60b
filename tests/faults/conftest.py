"""Fault-injection fixtures: a real cluster per test (coordinator and workers as child
processes) torn down with every process it started, and tiny jobs long enough to be
interrupted (192 optimizer steps of a 2-layer BERT: a few seconds of CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_helpers import Cluster
from jobfiles import make_sentiment_csv, write_text_job

from tunefleet.spec import load_job_file
from tunefleet.v1 import spec_pb2

# Short lease and heartbeats so that a lost worker is noticed in seconds.
HEARTBEAT_S = 0.5
LEASE_S = 2.5


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, heartbeat_s=HEARTBEAT_S, lease_s=LEASE_S)
    yield c
    c.destroy()


@pytest.fixture
def start_cluster(tmp_path):
    """For tests that want other lease settings: start_cluster(lease_s=8.0)."""
    made: list[Cluster] = []

    def start(**options) -> Cluster:
        options.setdefault("heartbeat_s", HEARTBEAT_S)
        options.setdefault("lease_s", LEASE_S)
        c = Cluster(tmp_path, **options)
        made.append(c)
        return c

    yield start
    for c in made:
        c.destroy()


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fault-data")
    return make_sentiment_csv(root / "train.csv", 512), make_sentiment_csv(root / "eval.csv", 64, 1)


@pytest.fixture
def make_job(tmp_path, tiny_bert, fault_data):
    """A resolved JobSpec: `epochs` x 64 steps, a metrics event every step, a checkpoint
    every 10 steps (and at each epoch end)."""

    def make(name: str = "fault-job", *, epochs: int = 3, data=None, **train) -> spec_pb2.JobSpec:
        train_section = {
            "epochs": epochs,
            "batch_size": 8,
            "precision": "no",
            "log_every_steps": 1,
            "checkpoint_every_steps": 10,
            **train,
        }
        folder = tmp_path / "jobs"
        folder.mkdir(exist_ok=True)
        path = write_text_job(folder, tiny_bert, data or fault_data, name=name, train=train_section)
        return load_job_file(path)

    return make

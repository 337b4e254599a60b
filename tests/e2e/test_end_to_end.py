"""The walking skeleton, for real: coordinator on 127.0.0.1:0, a worker process, gRPC,
the engine in a child process, and the SDK following events to the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from jobfiles import write_text_job

from tunefleet.client import Client, JobState
from tunefleet.client.errors import ValidationError
from tunefleet.coordinator import start_server
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, spec_pb2


@pytest.fixture
def coordinator(tmp_path):
    server = start_server("127.0.0.1:0", tmp_path / "coordinator.db", lease_timeout_s=10.0)
    yield server
    server.stop(0)


@pytest.fixture
def worker(coordinator, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunefleet.worker",
            "--coordinator",
            coordinator.address,
            "--artifacts",
            str(tmp_path / "artifacts"),
        ],
        start_new_session=True,
    )
    with Client(coordinator.address) as c:
        deadline = time.monotonic() + 60
        while not c.workers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.workers(), "worker did not register"
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_job_runs_to_success_with_live_metrics(
    coordinator, worker, tmp_path, tiny_bert, sentiment_data
):
    job_yaml = write_text_job(tmp_path, tiny_bert, sentiment_data)
    with Client(coordinator.address) as client:
        handle = client.submit(job_yaml)
        events = list(handle.events())
        job = client.get(handle.id)

    assert job.state == JobState.SUCCEEDED, job.reason
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "event seq must be contiguous from 1"
    states = [e.state_change.state for e in events if e.kind == "state_change"]
    assert states == [JobState.QUEUED, JobState.ASSIGNED, JobState.RUNNING, JobState.SUCCEEDED]
    train = [e.metrics for e in events if e.kind == "metrics" and e.metrics.phase == "train"]
    evals = [e.metrics for e in events if e.kind == "metrics" and e.metrics.phase == "eval"]
    assert train and all(m.loss is not None and m.lr is not None for m in train)
    assert len(evals) == 2 and "accuracy" in evals[-1].values
    assert any(e.kind == "report" and e.report.name == "freeze_plan" for e in events)

    # The artifact is what users' other tools load directly.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(job.artifacts["model"])
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert set(model.config.id2label.values()) == {"neg", "pos"}
    batch = tokenizer(["great fun movie", "awful dull plot"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 2)


def test_cancel_stops_a_running_job(coordinator, worker, tmp_path, tiny_bert, sentiment_data):
    job_yaml = write_text_job(
        tmp_path,
        tiny_bert,
        sentiment_data,
        name="long",
        train={"epochs": 500, "batch_size": 4, "log_every_steps": 1},
    )
    with Client(coordinator.address) as client:
        handle = client.submit(job_yaml)
        for event in handle.events():
            if event.kind == "metrics":
                break  # training is really running
        started = time.monotonic()
        client.cancel(handle.id)
        job = handle.wait(timeout=30)
        elapsed = time.monotonic() - started
    assert job.state == JobState.CANCELLED
    assert elapsed < 15, f"cancel took {elapsed:.1f} s"


def test_job_needing_more_gpus_than_any_worker_stays_queued(
    coordinator, worker, tmp_path, tiny_bert, sentiment_data
):
    job_yaml = write_text_job(tmp_path, tiny_bert, sentiment_data, resources={"gpus": 4})
    with Client(coordinator.address) as client:
        handle = client.submit(job_yaml)
        time.sleep(3)
        job = client.get(handle.id)
        assert job.state == JobState.QUEUED
        assert "GPU" in job.reason
        client.cancel(handle.id)
        assert client.get(handle.id).state == JobState.CANCELLED


def test_bad_spec_rejected_with_every_problem(coordinator, tmp_path, tiny_bert, sentiment_data):
    job_yaml = write_text_job(
        tmp_path,
        tiny_bert,
        sentiment_data,
        train={"epochs": 0, "batch_size": 16},
        optimizer={"name": "adamw", "lr": -1},
        finetune={"strategy": "last_k", "k": 7},
    )
    with Client(coordinator.address) as client, pytest.raises(ValidationError) as info:
        client.submit(job_yaml)
    paths = {e.path for e in info.value.errors}
    assert paths == {"train.epochs", "optimizer.lr", "finetune.k"}

    # The coordinator runs the same validator on what reaches it over the wire.
    spec = spec_pb2.JobSpec(name="raw")
    spec.train.epochs = 0
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as rpc:
            stub.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec), timeout=10)
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for path in ("model", "data", "train.epochs"):
        assert f"- {path}:" in rpc.value.details()
    with Client(coordinator.address) as client:
        assert client.list() == []

"""The whole stack on one machine: LocalCluster / `ftctl up` with a real worker process,
and `ftctl run` / `ftctl plan` calling the engine in-process. Tiny models, CPU, seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from client_helpers import coordinator_available, has_module, unused_port

from tunefleet.client import JobState, LocalCluster
from tunefleet.client.cli import main

FTCTL = Path(sys.executable).parent / "ftctl"

needs_stack = pytest.mark.skipif(
    not (coordinator_available() and has_module("tunefleet.worker.daemon") and has_module("torch")),
    reason="needs tunefleet.coordinator, tunefleet.worker and torch",
)
needs_engine = pytest.mark.skipif(
    not (has_module("tunefleet.worker.engine.trainer") and has_module("torch")),
    reason="needs the training engine (tunefleet[worker])",
)


@pytest.fixture
def tiny_job(tmp_path, tiny_bert, sentiment_data) -> Path:
    train, eval_ = sentiment_data
    job = {
        "name": "tiny-cli",
        "model": {"source": "hf", "name": str(tiny_bert)},
        "data": {"source": "csv", "train": str(train), "eval": str(eval_), "max_length": 16},
        "optimizer": {"lr": 5e-3},
        "train": {"epochs": 1, "batch_size": 16, "log_every_steps": 2},
    }
    path = tmp_path / "tiny-cli.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


@needs_stack
def test_local_cluster_trains_a_job_followed_by_the_cli(capsys, tmp_path, tiny_job):
    with LocalCluster(worker_log=tmp_path / "worker.log", db_path=tmp_path / "db") as cluster:
        with cluster.client() as client:
            (worker,) = client.workers()
            assert (worker.id, worker.state) == ("local-1", "LIVE")
        code = main(["submit", str(tiny_job), "--follow", "--coordinator", cluster.address])
        out, err = capsys.readouterr()
        assert code == 0, (out, err, (tmp_path / "worker.log").read_text()[-2000:])
        with cluster.client() as client:
            (job,) = client.list()
        worker_process = cluster.worker
    assert job.state is JobState.SUCCEEDED
    assert Path(job.artifacts["model"]).is_dir()
    assert "RUNNING training started on worker local-1" in out
    assert "freeze plan" in out and "eval  step" in out
    assert f"SUCCEEDED job {job.id} (tiny-cli)" in out
    assert worker_process.poll() is not None  # stop() took the worker down


@needs_stack
def test_ftctl_up_runs_until_sigterm_and_stops_the_worker(tmp_path):
    port = unused_port()
    db = tmp_path / "state" / "coordinator.db"
    proc = subprocess.Popen(
        [str(FTCTL), "up", "--listen", f"127.0.0.1:{port}", "--db", str(db)]
        + ["--artifacts", str(tmp_path / "artifacts")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = proc.stdout.readline()
        assert f"coordinator 127.0.0.1:{port}" in banner, banner
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "worker local-1 registered" in line or not line:
                break
        assert "registered" in line, line
        workers = subprocess.run(
            [str(FTCTL), "workers", "--coordinator", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "local-1" in workers.stdout and "LIVE" in workers.stdout
        assert _processes_mentioning(str(tmp_path / "artifacts")), "no worker process"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _processes_mentioning(str(tmp_path / "artifacts")) == []  # the worker is gone
    assert db.exists()


@needs_engine
def test_ftctl_plan_and_run(capsys, tmp_path, tiny_job):
    assert main(["plan", str(tiny_job)]) == 0
    plan, _ = capsys.readouterr()
    assert "embeddings" in plan and "trainable" in plan

    out_dir = tmp_path / "run"
    assert main(["run", str(tiny_job), "--out", str(out_dir)]) == 0
    out, _ = capsys.readouterr()
    assert f"RUNNING tiny-cli locally, writing to {out_dir}" in out
    assert "train step" in out and "eval  step" in out
    assert "SUCCEEDED tiny-cli" in out and f"  model       {out_dir / 'model'}" in out
    assert (out_dir / "model").is_dir()

    # The job edited, run again from scratch: its spec.json is this run's, not the first's.
    edited = yaml.safe_load(tiny_job.read_text())
    edited["optimizer"]["lr"] = 1e-3
    tiny_job.write_text(yaml.safe_dump(edited))
    assert main(["run", str(tiny_job), "--out", str(out_dir), "--fresh"]) == 0
    capsys.readouterr()
    assert json.loads((out_dir / "spec.json").read_text())["optimizer"]["lr"] == 1e-3


@needs_engine
def test_ftctl_run_says_the_jobs_own_metric_chose_the_model(capsys, tmp_path, tiny_job):
    """eval.metric: macro_f1 picks the exported step; the closing lines said "by validation
    accuracy" and led with accuracy (`ftctl run` did not pass the job's metric on)."""
    job = yaml.safe_load(tiny_job.read_text())
    job["eval"] = {"metric": "macro_f1"}
    tiny_job.write_text(yaml.safe_dump(job))
    assert main(["run", str(tiny_job), "--out", str(tmp_path / "run")]) == 0
    out, _ = capsys.readouterr()
    assert "by validation macro_f1 (ties -> lower eval loss)" in out
    assert "  validation  macro_f1 " in out

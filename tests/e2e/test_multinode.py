"""A 2-node job for real: a coordinator on 127.0.0.1:0, two worker processes offering one
CPU slot each, `accelerate launch --num_machines 2` on both, gloo between them. Its per-step
losses match the same job on 1 node x 2 processes: the same global ranks see the same
data, so the gang trains exactly as one machine would (tests/engine/test_distributed.py
compares 2 processes with 1 the same way)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from jobfiles import write_text_job

from tunefleet.client import Client, JobState
from tunefleet.coordinator import start_server


@pytest.fixture
def coordinator(tmp_path):
    server = start_server("127.0.0.1:0", tmp_path / "coordinator.db", lease_timeout_s=10.0)
    yield server
    server.stop(0)


@pytest.fixture
def start_workers(tmp_path):
    """Starts worker processes with one artifacts root (the shared storage a job's members
    need), each offering one CPU slot; stops them at teardown."""
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def start(address: str, *worker_ids: str) -> dict[str, subprocess.Popen]:
        started = {}
        for worker_id in worker_ids:
            started[worker_id] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tunefleet.worker",
                    "--coordinator",
                    address,
                    "--artifacts",
                    str(tmp_path / "artifacts"),
                    "--gpus",
                    "0",
                    "--id",
                    worker_id,
                    "--poll-s",
                    "1",
                ],
                env=env,
                start_new_session=True,  # its group: the worker and its launcher
            )
        procs.extend(started.values())
        with Client(address) as c:
            deadline = time.monotonic() + 60
            while len(c.workers()) < len(worker_ids) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(c.workers()) == len(worker_ids), "workers did not register"
        return started

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _run(client: Client, job_yaml):
    handle = client.submit(job_yaml)
    events = list(handle.events())
    return client.get(handle.id), events


def _losses(events, phase: str = "train") -> dict[int, float]:
    metrics = [e.metrics for e in events if e.kind == "metrics" and e.metrics.phase == phase]
    steps = [m.step for m in metrics]
    assert len(steps) == len(set(steps)), f"a {phase} step was reported twice: {steps}"
    if phase == "train":
        return {m.step: m.loss for m in metrics}
    return {m.step: m.values["loss"] for m in metrics}


def _alive_with(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (a job's out dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().split(") ", 1)[1][0] == "Z"
        except OSError:
            continue
        if text in cmdline and not zombie:
            found.append(cmdline)
    return found


def test_two_node_job_matches_one_node_with_two_processes(
    coordinator, start_workers, tmp_path, tiny_bert, sentiment_data
):
    start_workers(coordinator.address, "w-a", "w-b")
    sections = {
        "train": {"epochs": 2, "batch_size": 16, "precision": "no", "log_every_steps": 1},
        "eval": {"batch_size": 32},
    }
    gang_yaml = write_text_job(
        tmp_path,
        tiny_bert,
        sentiment_data,
        name="two-nodes",
        resources={"nodes": 2, "processes": 1, "gpus": 0},
        **sections,
    )
    single_yaml = write_text_job(
        tmp_path,
        tiny_bert,
        sentiment_data,
        name="one-node",
        resources={"nodes": 1, "processes": 2, "gpus": 0},
        **sections,
    )
    with Client(coordinator.address) as client:
        gang, gang_events = _run(client, gang_yaml)
        assert gang.state == JobState.SUCCEEDED, gang.reason
        single, single_events = _run(client, single_yaml)
        assert single.state == JobState.SUCCEEDED, single.reason

        # Both workers ran a machine rank of the gang, and both said so.
        assert [(m.rank, m.address) for m in gang.members] == [(0, "127.0.0.1"), (1, "127.0.0.1")]
        assert {m.worker_id for m in gang.members} == {"w-a", "w-b"}
        assert gang.worker_id == gang.members[0].worker_id
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            members = client.get(gang.id).members
            if all(m.state == JobState.SUCCEEDED for m in members):
                break
            time.sleep(0.2)
        assert [m.state for m in members] == [JobState.SUCCEEDED] * 2, members

    logs = [e.log.message for e in gang_events if e.kind == "log"]
    assert any("training on 2 CPU processes (gloo)" in m for m in logs), logs
    assert any("machine rank 1 of 2" in m for m in logs), logs
    states = [e.state_change.state for e in gang_events if e.kind == "state_change"]
    assert states == [JobState.QUEUED, JobState.ASSIGNED, JobState.RUNNING, JobState.SUCCEEDED]

    got, want = _losses(gang_events), _losses(single_events)
    assert sorted(got) == list(range(1, 9)) and sorted(want) == sorted(got)
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-4), step
    assert _losses(gang_events, "eval") == pytest.approx(_losses(single_events, "eval"), abs=1e-4)

    out = tmp_path / "artifacts" / gang.id
    assert gang.artifacts["model"] == str(out / "model") and (out / "model").is_dir()
    assert (out / "attempts" / "1" / "machine-1" / "engine.log").is_file()
    assert _alive_with(str(out)) == [], "no training process outlives its job"


def test_a_lost_member_gets_the_others_training_processes_killed(
    start_workers, tmp_path, tiny_bert, sentiment_data
):
    """Member w-b's worker freezes (SIGSTOP; its training processes run on). After a lease
    the coordinator writes it off and requeues the gang; w-a's next heartbeat says the job
    is no longer its own, and w-a kills its launcher, whose ranks die with it."""
    server = start_server(
        "127.0.0.1:0", tmp_path / "c.db", heartbeat_interval_s=0.5, lease_timeout_s=3.0
    )
    try:
        workers = start_workers(server.address, "w-a", "w-b")
        job_yaml = write_text_job(
            tmp_path,
            tiny_bert,
            sentiment_data,
            name="long-gang",
            resources={"nodes": 2, "processes": 1, "gpus": 0},
            train={"epochs": 500, "batch_size": 4, "log_every_steps": 1},
        )
        with Client(server.address) as client:
            handle = client.submit(job_yaml)
            for event in handle.events():
                if event.kind == "metrics":
                    break  # both machines are training together
            job = client.get(handle.id)
            rank0, rank1 = (m.worker_id for m in job.members)
            rank0_part = str(tmp_path / "artifacts" / job.id / "attempts" / "1" / "events.jsonl")
            # rank 0's launcher and its rank (on a loaded machine the first metrics can
            # arrive before /proc shows both: wait for them, boundedly)
            deadline = time.monotonic() + 15
            while len(_alive_with(rank0_part)) != 2:
                assert time.monotonic() < deadline, _alive_with(rank0_part)
                time.sleep(0.2)

            os.kill(workers[rank1].pid, signal.SIGSTOP)  # only the worker daemon
            try:
                deadline = time.monotonic() + 20
                while client.get(job.id).state != JobState.QUEUED:
                    assert time.monotonic() < deadline, client.get(job.id)
                    time.sleep(0.2)
                while _alive_with(rank0_part):
                    assert time.monotonic() < deadline, _alive_with(rank0_part)
                    time.sleep(0.2)
                requeued = client.get(job.id)
            finally:
                os.killpg(workers[rank1].pid, signal.SIGKILL)  # its launcher dies with it
        assert requeued.reason == "worker lost" or "waiting" in requeued.reason
        assert requeued.attempt == 1
        assert [m.state for m in requeued.members] == [JobState.CANCELLED] * 2
    finally:
        server.stop(0)

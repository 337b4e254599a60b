"""The warm engine host through a real worker process: jobs after the first skip the
interpreter start (one host per worker), and every fault the worker handles for a fresh
training process it handles for a warm one: cancel, a crash, invalid input, kill -9 of the
worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest
from fault_helpers import descendants, engine_pid, messages, pid_alive, report, wait_for
from jobfiles import write_text_job

from tunefleet.spec import load_job_file
from tunefleet.v1 import coordinator_pb2, job_pb2

pytestmark = pytest.mark.timeout(300)

WARM = "in a warm engine process (pid "


def _started(cluster, job_id: str, attempt: int = 1) -> str:
    """The worker's "started on worker X ... (pid N)" event of `attempt`."""
    started = [
        m for m in messages(cluster.events(job_id), attempt=attempt) if m.startswith("started on")
    ]
    assert started, f"attempt {attempt} of {job_id} has no 'started' event"
    return started[0]


def _one_worker(cluster, *flags: str) -> None:
    cluster.start_coordinator()
    cluster.start_worker("w1", extra_args=flags)
    cluster.wait_worker_live("w1")


def _succeed(cluster, spec) -> job_pb2.Job:
    job = cluster.submit(spec)
    return cluster.wait_job(job.id, lambda j: j.state == job_pb2.SUCCEEDED, f"{job.id} to succeed")


def _manifest_job_ids(cluster, job_id: str) -> set[str]:
    folder = cluster.artifacts / job_id / "checkpoints"
    return {
        json.loads((step / "MANIFEST.json").read_text())["job_id"] for step in folder.glob("step-*")
    }


def test_jobs_on_one_worker_share_one_warm_host(cluster, make_job):
    _one_worker(cluster)
    first = _succeed(cluster, make_job("first", epochs=1))
    second = _succeed(cluster, make_job("second", epochs=1))

    for job in (first, second):
        assert WARM in _started(cluster, job.id), _started(cluster, job.id)
        # The attempt's own environment reached the forked process (lineage reads
        # TUNEFLEET_JOB_ID at run time, into every checkpoint's manifest).
        assert _manifest_job_ids(cluster, job.id) == {job.id}
    log = cluster.workers["w1"].log()
    assert log.count("warm engine host ready") == 1, log
    report(
        f"two jobs on one worker: both forked warm by one engine host ({_started(cluster, first.id)!r}"
        f", {_started(cluster, second.id)!r}); each checkpoint carries its own job id"
    )


def test_no_warm_engine_starts_every_training_process_fresh(cluster, make_job):
    _one_worker(cluster, "--no-warm-engine")
    job = _succeed(cluster, make_job("fresh", epochs=1))
    assert WARM not in _started(cluster, job.id)
    assert "warm engine host" not in cluster.workers["w1"].log()


def test_cancel_stops_a_warm_training_process_within_seconds(cluster, make_job):
    _one_worker(cluster)
    job = cluster.submit(make_job("long", epochs=20))
    cluster.wait_step(job.id, 1, 2)
    assert WARM in _started(cluster, job.id)
    engine = engine_pid(cluster.events(job.id), 1)

    asked = time.monotonic()
    cluster.stub.CancelJob(coordinator_pb2.CancelJobRequest(job_id=job.id), timeout=10)
    cluster.wait_job(job.id, lambda j: j.state == job_pb2.CANCELLED, "the job to be cancelled")
    wait_for(lambda: not pid_alive(engine), 10, "the warm training process to exit")
    took = time.monotonic() - asked
    assert took < 15, f"cancel took {took:.1f} s"
    report(f"cancel of a warm training process: CANCELLED and the process gone in {took:.1f} s")


def test_a_cancel_reaches_the_worker_in_the_reply_to_its_next_report(start_cluster, make_job):
    """With heartbeats a minute apart, the job still stops within seconds: the coordinator's
    reply to the worker's next event report says stop (a sweep's pruner stops a trial the
    same way, in the reply to the report whose metrics pruned it)."""
    cluster = start_cluster(heartbeat_s=60.0, lease_s=180.0)
    _one_worker(cluster)
    job = cluster.submit(make_job("long", epochs=20))
    cluster.wait_step(job.id, 1, 2)

    asked = time.monotonic()
    cluster.stub.CancelJob(coordinator_pb2.CancelJobRequest(job_id=job.id), timeout=10)
    cluster.wait_job(job.id, lambda j: j.state == job_pb2.CANCELLED, "the job to be cancelled")
    took = time.monotonic() - asked
    log = cluster.workers["w1"].log()
    assert "stop requested by the coordinator" in log, log[-2000:]
    assert "cancel requested by the coordinator" not in log  # not through a heartbeat
    assert took < 15, f"cancel took {took:.1f} s"
    report(f"cancel with heartbeats 60 s apart: CANCELLED in {took:.1f} s (report reply)")


def test_a_crashed_warm_process_is_restarted_warm_by_the_same_host(cluster, make_job):
    _one_worker(cluster)
    job = cluster.submit(make_job("crashing", epochs=6))  # still training well after the kill
    cluster.wait_step(job.id, 1, 15)
    os.kill(engine_pid(cluster.events(job.id), 1), signal.SIGKILL)

    done = cluster.wait_job(job.id, lambda j: j.state == job_pb2.SUCCEEDED, "the job to succeed")
    assert (done.attempt, done.restarts) == (2, 1)
    requeue = [m for m in messages(cluster.events(job.id), attempt=1) if "exited with code" in m]
    assert requeue and "exited with code -9 (SIGKILL)" in requeue[0], requeue
    assert WARM in _started(cluster, job.id, 2)
    log = cluster.workers["w1"].log()
    assert log.count("warm engine host ready") == 1, "the crash must not take the host down"
    report("warm training process SIGKILLed mid-epoch: restarted warm from the same host")


def test_invalid_input_in_a_warm_process_fails_once(cluster, tiny_bert, fault_data, tmp_path):
    """Exit code 2 from a forked process means what it means from a fresh one: FAILED,
    the engine's own reason, no retry."""
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_bert, broken)
    (broken / "tokenizer_config.json").write_text("{not json")
    path = write_text_job(tmp_path, broken, fault_data, name="broken")
    _one_worker(cluster)
    job = cluster.submit(load_job_file(path, check_paths=False))

    done = cluster.wait_job(job.id, lambda j: j.state == job_pb2.FAILED, "the job to fail")
    assert (done.attempt, done.restarts) == (1, 0)
    assert "cannot load a tokenizer" in done.reason, done.reason
    assert WARM in _started(cluster, job.id)
    report(f"invalid input in a warm process: FAILED once, not retried: {done.reason[:80]!r}")


def test_kill_9_of_the_worker_takes_host_and_warm_process_with_it(cluster, make_job):
    _one_worker(cluster)
    job = cluster.submit(make_job("orphan", epochs=20))
    cluster.wait_step(job.id, 1, 2)
    assert WARM in _started(cluster, job.id)
    worker = cluster.workers["w1"]
    family = descendants(worker.pid)  # the host and its training process (and the shims)
    engine = engine_pid(cluster.events(job.id), 1)
    assert engine in family

    worker.kill9()
    killed = time.monotonic()
    wait_for(lambda: not any(pid_alive(p) for p in family), 15, "host and engine to die")
    report(
        f"kill -9 of a worker running a warm job: its engine host and training process "
        f"({len(family)} processes) gone in {time.monotonic() - killed:.1f} s"
    )

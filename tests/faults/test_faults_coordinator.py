"""Coordinator failures, for real: kill -9 of the coordinator process (the database is
whatever SQLite made durable), restarted on the same database and port."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from fault_helpers import (
    check_events,
    finished_steps,
    free_port,
    report,
    state_changes,
    subprocess_env,
    train_steps,
    wait_for,
)

from tunefleet.client import Client, RetryPolicy
from tunefleet.client.errors import TunefleetError
from tunefleet.v1 import coordinator_pb2, job_pb2

pytestmark = pytest.mark.timeout(300)


def _stable(job: job_pb2.Job) -> tuple:
    """What a restart must not change about a job that is not running."""
    return (job.id, job.SerializeToString(deterministic=True))


def test_kill_9_the_coordinator_while_a_job_runs(start_cluster, make_job):
    # The lease outlasts the 5 s outage plus the restart and reconnection: the worker keeps
    # its job throughout. (With a shorter lease the worker would fence itself and the job
    # would resume from its checkpoint instead: see test_faults_worker.)
    cluster = start_cluster(lease_s=15.0)
    cluster.start_coordinator()
    done_before = cluster.submit(make_job("queued-then-cancelled"))
    cluster.stub.CancelJob(coordinator_pb2.CancelJobRequest(job_id=done_before.id), timeout=10)
    cluster.start_worker("w1")
    cluster.wait_worker_live("w1")
    job = cluster.submit(make_job(epochs=20))  # still training after step 200 and 5 s down
    figures = []

    for down_s, at_step in ((0.0, 30), (5.0, 200)):
        cluster.wait_step(job.id, 1, at_step)
        events_before = cluster.events(job.id)
        others_before = [_stable(j) for j in cluster.jobs() if j.id != job.id]
        cluster.kill_coordinator()
        killed = time.monotonic()
        integrity = cluster.integrity_check()
        time.sleep(down_s)
        cluster.start_coordinator()

        assert integrity == "ok"
        # What was acknowledged is there, unchanged: every other job, every event so far.
        assert [_stable(j) for j in cluster.jobs() if j.id != job.id] == others_before
        assert cluster.events(job.id)[: len(events_before)] == events_before
        # The worker re-attaches: its reports land again, for the same attempt.
        last = max(train_steps(events_before))
        cluster.wait_step(job.id, 1, last + 1)
        back_in = time.monotonic() - killed - down_s
        running = cluster.job(job.id)
        assert (running.attempt, running.worker_id) == (1, "w1")
        figures.append(
            f"{down_s:g} s down at step {last}: reports again {back_in:.1f} s after the "
            f"restart, still attempt 1 on w1"
        )

    done = cluster.wait_job(job.id, lambda j: j.state == job_pb2.SUCCEEDED, "the job to succeed")
    events = cluster.events(job.id)
    contiguous = check_events(events)
    assert [s for s, _, _ in state_changes(events)] == [
        "QUEUED",
        "ASSIGNED",
        "RUNNING",
        "SUCCEEDED",
    ]
    assert (done.attempt, done.restarts) == (1, 0)
    assert cluster.integrity_check() == "ok"
    report(
        f"kill -9 coordinator twice during a job (lease {cluster.lease_s:g} s): "
        + "; ".join(figures)
        + f"; jobs and events identical after each restart, integrity_check ok, one attempt "
        f"only, {finished_steps(events)}, {contiguous}"
    )


def test_duplicate_submits_and_reports_are_stored_once(cluster, make_job):
    cluster.start_coordinator()
    spec = make_job()
    key = f"retry-{uuid.uuid4().hex}"
    first = cluster.submit(spec, key)
    again = cluster.submit(spec, key)
    register = coordinator_pb2.RegisterWorkerRequest(worker_id="w-dup")
    cluster.stub.RegisterWorker(register, timeout=10)
    acquire = coordinator_pb2.AcquireJobRequest(worker_id="w-dup", wait_seconds=1)
    attempt = cluster.stub.AcquireJob(acquire, timeout=10).assignment.attempt

    def send(batch: int, *messages: str) -> int:
        events = [job_pb2.Event(log=job_pb2.LogLine(message=m)) for m in messages]
        request = coordinator_pb2.ReportEventsRequest(
            worker_id="w-dup", job_id=first.id, attempt=attempt, events=events, batch_seq=batch
        )
        return cluster.stub.ReportEvents(request, timeout=10).last_seq

    seqs = [send(1, "a", "b"), send(1, "a", "b"), send(2, "c")]
    # The coordinator dies after storing batch 2; the worker never got the reply and
    # sends it again to the restarted coordinator, as the daemon's retry loop does.
    cluster.kill_coordinator()
    cluster.start_coordinator()
    seqs += [send(2, "c"), send(3, "d")]
    after_restart = cluster.submit(spec, key)

    events = cluster.events(first.id)
    contiguous = check_events(events)
    logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert first.id == again.id == after_restart.id
    assert len(cluster.jobs()) == 1
    assert logs == ["a", "b", "c", "d"]
    assert seqs == [5, 5, 6, 6, 7]
    report(
        f"SubmitJob x3 with one idempotency key (the third after kill -9 + restart): 1 job; "
        f"ReportEvents batches 1,1,2 | kill -9 | 2,3: last_seq {seqs}, each event stored "
        f"once, {contiguous}"
    )


def test_200_concurrent_submits_through_a_coordinator_kill(cluster, make_job):
    cluster.start_coordinator()
    spec = make_job()
    total, threads = 200, 32
    retry = RetryPolicy(max_elapsed_s=60.0, max_backoff_s=0.5)
    acked: dict[int, str] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        with Client(cluster.address, retry=retry, timeout=10) as client:
            try:
                handle = client.submit(spec, check_paths=False)  # idempotency key: one per call
            except TunefleetError as exc:
                with lock:
                    failures.append(f"{i}: {exc}")
                return
        with lock:
            acked[i] = handle.id

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(submit, i) for i in range(total)]
        wait_for(lambda: len(acked) >= 40, 120, "40 acknowledged submits")
        cluster.kill_coordinator()
        acked_before_kill = len(acked)
        integrity = cluster.integrity_check()
        time.sleep(1.0)
        cluster.start_coordinator()
        for future in futures:
            future.result(timeout=120)

    stored = [j.id for j in cluster.jobs()]
    assert integrity == "ok" and cluster.integrity_check() == "ok"
    assert not failures, failures[:3]
    assert set(acked.values()) <= set(stored), "an acknowledged job is missing"
    assert len(stored) == len(set(stored)) == len(acked) == total, "retries made duplicates"
    report(
        f"{total} concurrent SubmitJob ({threads} threads), coordinator kill -9 after "
        f"{acked_before_kill} acks, down 1 s: {len(acked)}/{total} acknowledged "
        f"({len(acked) - acked_before_kill} through the restart, SDK retries with one "
        f"idempotency key each), all present exactly once ({len(stored)} jobs), "
        f"integrity_check ok"
    )


def test_a_second_coordinator_on_the_same_database_is_refused(cluster):
    """Each coordinator schedules from its own memory (leases, long polls, sweep studies):
    two on one database placed the same job twice. A second `python -m
    tunefleet.coordinator`, `ftctl server` or `ftctl up` on another port but the same --db
    used to start and serve; now each exits 1 with one line naming the owner."""
    first = cluster.start_coordinator()
    entry_points = {
        "python -m tunefleet.coordinator": [sys.executable, "-m", "tunefleet.coordinator"],
        "ftctl server": [sys.executable, "-m", "tunefleet.client.cli", "server"],
        "ftctl up": [sys.executable, "-m", "tunefleet.client.cli", "up", "--no-dashboard"],
    }
    seconds = {
        name: subprocess.Popen(
            [*argv, "--listen", f"127.0.0.1:{free_port()}", "--db", str(cluster.db)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
            cwd=cluster.root,
        )
        for name, argv in entry_points.items()
    }
    outcomes = {}
    try:
        for name, proc in seconds.items():
            out, err = proc.communicate(timeout=120)
            outcomes[name] = (proc.returncode, out, err)
    finally:
        for proc in seconds.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    owner = f"(pid {first.pid}, {cluster.address})"
    for name, (code, out, err) in outcomes.items():
        assert code == 1, (name, out, err)
        assert "Traceback" not in out + err, (name, err)
        line = err.strip().splitlines()[-1]
        assert f"the database {cluster.db} is in use by another coordinator {owner}" in line, (
            name,
            err,
        )
        assert "listening" not in out + err, (name, out, err)
    assert first.alive() and cluster._serving(), first.log()  # the owner serves on
    assert cluster.integrity_check() == "ok"
    report(f"a second coordinator on one database, 3 entry points: refused ({line})")


def test_a_coordinator_restarts_at_once_after_kill_9(cluster):
    """The lock goes with the killed process, not with a cleanup: a restart issued right
    after SIGKILL, before the old process is even reaped, waits the moment the kernel takes
    to close its files and serves."""
    cluster.start_coordinator()
    killed = cluster.coordinator
    killed.signal(signal.SIGKILL)  # no wait: the restart races the old process's exit
    cluster.start_coordinator()
    assert killed.wait(timeout=10) == -signal.SIGKILL
    assert cluster.coordinator.alive() and cluster._serving(), cluster.coordinator.log()
    assert "in use by another coordinator" not in cluster.coordinator.log()

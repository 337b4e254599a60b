"""Worker failures, for real: kill -9 mid-epoch, SIGTERM (drain), and a worker frozen for
longer than its lease (SIGSTOP/SIGCONT). In each, the job must end SUCCEEDED with every
step trained once, resumed from a checkpoint, and a follower must see contiguous events."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import (
    check_events,
    descendants,
    engine_pid,
    event_time,
    finished_steps,
    messages,
    pid_alive,
    report,
    resumed_from,
    state_changes,
    train_steps,
    wait_for,
)

from tunefleet.v1 import coordinator_pb2, job_pb2

pytestmark = pytest.mark.timeout(300)


def _start(cluster, make_job, *workers: str, epochs: int = 10) -> job_pb2.Job:
    """640 steps by default: a warm engine process trains the tiny BERT from its first
    second, and each fault below must land while it still trains."""
    cluster.start_coordinator()
    for worker_id in workers:
        cluster.start_worker(worker_id)
        cluster.wait_worker_live(worker_id)
    return cluster.submit(make_job(epochs=epochs))


def _requeue_event(events, attempt: int):
    return next(
        e
        for e in events
        if e.WhichOneof("kind") == "state_change"
        and e.state_change.state == job_pb2.QUEUED
        and e.attempt == attempt
    )


def test_kill_9_a_worker_mid_epoch(cluster, make_job):
    job = _start(cluster, make_job, "w1")
    cluster.wait_job(job.id, lambda j: j.state == job_pb2.RUNNING, "the job to run on w1")
    cluster.start_worker("w2")  # a spare, started while w1 trains
    cluster.wait_worker_live("w2")
    cluster.wait_step(job.id, 1, 25)
    first_engine = engine_pid(cluster.events(job.id), 1)

    cluster.workers["w1"].kill9()
    killed = time.time()
    killed_at = cluster.last_step(job.id, 1)

    done = cluster.wait_job(job.id, lambda j: j.state == job_pb2.SUCCEEDED, "the job to succeed")
    events = cluster.events(job.id)
    contiguous = check_events(events)
    requeue = _requeue_event(events, 1)
    assert requeue.state_change.reason == "worker lost"
    assert (done.attempt, done.worker_id, done.restarts) == (2, "w2", 0)
    resumed = resumed_from(events, 2)
    assert resumed is not None and resumed > 0
    # Steps w1 trained (up to the checkpoint) but never relayed came from its event file.
    recovered = [s for s in train_steps(events, attempt=2) if s <= resumed]
    assert not pid_alive(first_engine), "the engine must die with its worker"
    report(
        f"kill -9 worker at step {killed_at} (lease {cluster.lease_s:g} s): requeued in "
        f"{event_time(requeue) - killed:.1f} s as 'worker lost', attempt 2 on w2 resumed from "
        f"step {resumed} ({len(recovered)} steps w1 never relayed resent from its event file), "
        f"engine of w1 gone with it, {finished_steps(events)}, restarts 0, {contiguous}"
    )


def _running_on_w1_with_w2_spare(cluster, make_job, step: int, epochs: int = 10) -> job_pb2.Job:
    job = _start(cluster, make_job, "w1", epochs=epochs)
    cluster.wait_job(job.id, lambda j: j.state == job_pb2.RUNNING, "the job to run on w1")
    cluster.start_worker("w2")
    cluster.wait_worker_live("w2")
    cluster.wait_step(job.id, 1, step)
    return job


def _drain_stop_step(events) -> int:
    """The step the engine of attempt 1 checkpointed at when it was drained."""
    said = messages(events, attempt=1)
    stops = [m for m in said if m.startswith("SIGTERM: stopped after step")]
    assert stops, f"attempt 1 never said it stopped on SIGTERM; its last lines: {said[-8:]}"
    return int(stops[0].split("step ")[1].split()[0])


def test_sigterm_drains_a_worker(cluster, make_job):
    job = _running_on_w1_with_w2_spare(cluster, make_job, 25)

    cluster.workers["w1"].signal(signal.SIGTERM)
    started = time.monotonic()
    signalled_at = cluster.last_step(job.id, 1)
    exit_code = cluster.workers["w1"].wait(timeout=40)
    drained_in = time.monotonic() - started

    done = cluster.wait_job(job.id, lambda j: j.state == job_pb2.SUCCEEDED, "the job to succeed")
    events = cluster.events(job.id)
    contiguous = check_events(events)
    assert exit_code == 0 and drained_in < 30
    stopped_at = _drain_stop_step(events)
    requeue = _requeue_event(events, 1)
    assert requeue.state_change.reason == "worker w1 is shutting down (drained)"
    assert (done.attempt, done.worker_id, done.restarts) == (2, "w2", 0)
    assert resumed_from(events, 2) == stopped_at  # not one step lost
    report(
        f"SIGTERM worker at step {signalled_at}: engine finished step {stopped_at}, "
        f"checkpointed and exited 75, worker released the job and exited {exit_code} in "
        f"{drained_in:.1f} s; attempt 2 on w2 resumed from step {stopped_at} (nothing lost, "
        f"restarts 0), {finished_steps(events)}, {contiguous}"
    )


def test_a_worker_frozen_longer_than_its_lease_is_fenced(cluster, make_job):
    """The worker's host freezes (SIGSTOP of the worker and of its training process): a
    partition in which nothing on that host can act. After the lease the job runs on w2.
    On SIGCONT the stale worker must not touch the job again: it kills its own training
    process (its lease ran out), and the coordinator refuses whatever it still sends."""
    job = _start(cluster, make_job, "w1")
    cluster.wait_job(job.id, lambda j: j.state == job_pb2.RUNNING, "the job to run on w1")
    cluster.start_worker("w2")
    cluster.wait_worker_live("w2")
    cluster.wait_step(job.id, 1, 25)
    worker = cluster.workers["w1"]
    stale_engine = engine_pid(cluster.events(job.id), 1)

    worker.signal(signal.SIGSTOP)
    _kill(stale_engine, signal.SIGSTOP)
    frozen = time.time()
    frozen_at = cluster.last_step(job.id, 1)
    moved = cluster.wait_job(
        job.id, lambda j: j.attempt == 2 and j.state == job_pb2.RUNNING, "attempt 2 on w2"
    )
    new_step = cluster.wait_step(job.id, 2, 0)  # the new attempt trains in the same out dir
    # The worker wakes first (SIGCONT), then the training process it should have killed.
    worker.signal(signal.SIGCONT)
    thawed = time.monotonic()
    wait_for(lambda: not pid_alive(stale_engine), 10, "the stale engine to be killed")
    fenced_in = time.monotonic() - thawed
    _kill(stale_engine, signal.SIGCONT)
    frozen_for = time.time() - frozen

    done = cluster.wait_job(job.id, lambda j: j.state == job_pb2.SUCCEEDED, "the job to succeed")
    events = cluster.events(job.id)
    contiguous = check_events(events)
    requeue = _requeue_event(events, 1)
    assert requeue.state_change.reason == "worker lost"
    assert (moved.worker_id, done.attempt, done.worker_id) == ("w2", 2, "w2")
    late = [e for e in events if e.attempt == 1 and e.seq > requeue.seq]
    assert not late, f"the stale attempt got events in after the requeue: {late}"
    assert [s for s, _, _ in state_changes(events)].count("RUNNING") == 2  # one at a time
    log = worker.log()
    fenced_by = [
        why
        for line, why in (
            ("lease lost; killing the training process", "its own lease check"),
            ("is no longer ours", "the coordinator's heartbeat reply"),
            ("does not belong to worker w1", "FAILED_PRECONDITION on a late call"),
        )
        if line in log
    ]
    assert fenced_by, "the stale worker did not notice it lost the job"
    wait_for(lambda: cluster.worker_state("w1") == coordinator_pb2.LIVE, 30, "w1 to register again")
    report(
        f"SIGSTOP worker (and its engine) {frozen_for:.1f} s at step {frozen_at} (lease "
        f"{cluster.lease_s:g} s): requeued after {event_time(requeue) - frozen:.1f} s, attempt 2 "
        f"on w2 resumed from step {resumed_from(events, 2)} and was at step {new_step} when the "
        f"old worker woke; on SIGCONT the stale worker killed "
        f"its engine in {fenced_in:.1f} s (fenced by {' and '.join(fenced_by)}), no attempt-1 "
        f"event got in after the requeue (seq {requeue.seq}), it registered again; "
        f"{finished_steps(events)}, {contiguous}"
    )


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def test_kill_9_a_worker_takes_every_rank_of_its_job_with_it(cluster, make_job):
    """A 2-process job: launcher and both ranks die with the worker, none trains on."""
    spec = make_job(epochs=20)
    spec.resources.processes = 2
    cluster.start_coordinator()
    cluster.start_worker("w1")
    cluster.wait_worker_live("w1")
    job = cluster.submit(spec)
    cluster.wait_step(job.id, 1, 2)
    worker = cluster.workers["w1"]
    training = descendants(worker.pid)
    assert len(training) >= 3, "expected the launcher and two ranks"  # (+ the pdeathsig shim)

    worker.kill9()
    killed = time.monotonic()
    wait_for(lambda: not any(pid_alive(p) for p in training), 15, "every rank to die")
    report(
        f"kill -9 worker running a 2-process job: launcher and {len(training) - 1} rank "
        f"processes gone in {time.monotonic() - killed:.1f} s, no orphan trains on"
    )


def test_ftctl_worker_drain_moves_the_job_and_the_worker_exits(cluster, make_job):
    """`ftctl worker drain w1`: as SIGTERM, but asked through the coordinator (admin)."""
    # The request travels further than a signal (an ftctl process starts, the coordinator
    # answers w1's next heartbeat): on a loaded CI host a 192-step job could finish before
    # it lands, and a drain that comes too late rightly changes nothing. 640 steps.
    job = _running_on_w1_with_w2_spare(cluster, make_job, 15)

    ftctl = Path(sys.executable).parent / "ftctl"
    started = time.monotonic()
    drained = subprocess.run(
        [ftctl, "--coordinator", cluster.address, "worker", "drain", "w1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert drained.returncode == 0, drained.stderr
    assert "worker w1 is DRAINING" in drained.stdout
    asked_at = cluster.last_step(job.id, 1)
    exit_code = cluster.workers["w1"].wait(timeout=60)
    exited_in = time.monotonic() - started

    done = cluster.wait_job(job.id, lambda j: j.state == job_pb2.SUCCEEDED, "the job to succeed")
    events = cluster.events(job.id)
    contiguous = check_events(events)
    requeue = _requeue_event(events, 1)
    assert requeue.state_change.reason == "worker w1 drained on request (ftctl worker drain)"
    assert exit_code == 0
    assert (done.attempt, done.worker_id, done.restarts) == (2, "w2", 0)
    stopped_at = _drain_stop_step(events)
    assert resumed_from(events, 2) == stopped_at
    unknown = subprocess.run(
        [ftctl, "--coordinator", cluster.address, "worker", "drain", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode != 0 and "worker nope not found" in unknown.stderr
    report(
        f"ftctl worker drain at step {asked_at}: engine checkpointed at step {stopped_at}, "
        f"worker exited {exit_code} {exited_in:.1f} s after the request; attempt 2 on w2 "
        f"resumed from step {stopped_at}, {finished_steps(events)}, {contiguous}"
    )

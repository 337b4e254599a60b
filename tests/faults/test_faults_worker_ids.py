"""Two worker processes with one `--id`, for real: the second one stops at start with a
one-line error and the first one's job trains on undisturbed; a worker restarted right
after kill -9 with the same id gets its id back in seconds, not after a lease; and the old
process, if it was only frozen and wakes up, kills its training process and stops."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import pytest
from fault_helpers import engine_pid, pid_alive, report, state_changes, wait_for

from tunefleet.v1 import job_pb2

pytestmark = pytest.mark.timeout(300)


def test_a_second_worker_with_the_same_id_stops_and_leaves_the_first_alone(cluster, make_job):
    cluster.start_coordinator()
    cluster.start_worker("w1")
    cluster.wait_worker_live("w1")
    job = cluster.submit(make_job(epochs=30))
    cluster.wait_step(job.id, 1, 5)

    twin = cluster.start_worker("w1", name="w1-twin")  # a copy-pasted unit
    code = twin.wait(timeout=60)
    log = twin.log()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert code == 1, log
    assert len(errors) == 1, log
    assert errors[0].startswith(
        f"error: worker id w1 is in use by another worker process on {socket.gethostname()} "
        "(last heartbeat "
    ), log
    assert errors[0].endswith("s ago): give each worker its own --id"), log
    assert "Traceback" not in log

    # The first worker's attempt was never touched, and it keeps training.
    at_exit = cluster.last_step(job.id, 1)
    cluster.wait_step(job.id, 1, at_exit + 3)
    running = cluster.job(job.id)
    assert (running.state, running.attempt, running.worker_id) == (job_pb2.RUNNING, 1, "w1")
    changes = [state for state, _, _ in state_changes(cluster.events(job.id))]
    assert changes == ["QUEUED", "ASSIGNED", "RUNNING"]
    assert cluster.workers["w1"].alive()
    report(f"twin worker w1 exited {code}: {errors[0]!r}; attempt 1 trains on, step {at_exit}+")


def test_a_worker_restarted_right_after_kill_9_gets_its_id_back(start_cluster, make_job):
    cluster = start_cluster(lease_s=30.0)  # the old lease outlives the restart by far
    cluster.start_coordinator()
    cluster.start_worker("w1")
    cluster.wait_worker_live("w1")
    job = cluster.submit(make_job(epochs=30))
    cluster.wait_step(job.id, 1, 5)

    cluster.workers["w1"].kill9()
    killed = time.monotonic()
    again = cluster.start_worker("w1", name="w1-again")
    resumed = cluster.wait_job(
        job.id, lambda j: j.attempt == 2 and j.state == job_pb2.RUNNING, "attempt 2", timeout=60
    )
    took = time.monotonic() - killed
    assert resumed.worker_id == "w1" and again.alive(), again.log()
    assert took < cluster.lease_s / 2, f"the restarted worker waited {took:.1f} s"
    requeue = next(
        reason
        for state, reason, attempt in state_changes(cluster.events(job.id))
        if attempt == 1 and state == "QUEUED"
    )
    assert requeue == "worker w1 restarted"
    wait_for(lambda: cluster.last_step(job.id, 2) > 0, 60, "attempt 2 to train")
    report(f"w1 restarted after kill -9: attempt 2 running on it {took:.1f} s after the kill")


def test_a_frozen_worker_whose_id_was_taken_over_stops_when_it_wakes(start_cluster, make_job):
    """The host freezes (SIGSTOP of the worker and its training process) well within the
    lease, and the same worker is started again meanwhile, as a supervisor would: it takes
    the id over. On SIGCONT the old process must not fight for the id: its heartbeat is
    refused, it kills its training process (attempt 2 trains in the same out dir) and exits
    with the one-line error."""
    cluster = start_cluster(lease_s=60.0)  # its own lease check never fires here
    cluster.start_coordinator()
    old = cluster.start_worker("w1")
    cluster.wait_worker_live("w1")
    job = cluster.submit(make_job(epochs=30))
    cluster.wait_step(job.id, 1, 5)
    stale_engine = engine_pid(cluster.events(job.id), 1)
    old.signal(signal.SIGSTOP)
    _kill(stale_engine, signal.SIGSTOP)

    cluster.start_worker("w1", name="w1-again")
    cluster.wait_job(
        job.id, lambda j: j.attempt == 2 and j.state == job_pb2.RUNNING, "attempt 2", timeout=60
    )
    old.signal(signal.SIGCONT)
    wait_for(lambda: not pid_alive(stale_engine), 15, "the stale engine to be killed")
    code = old.wait(timeout=30)
    _kill(stale_engine, signal.SIGCONT)
    log = old.log()
    assert code == 1, log
    assert "error: worker id w1 is in use by another worker process" in log
    assert "Traceback" not in log
    cluster.wait_step(job.id, 2, cluster.last_step(job.id, 2) + 3)
    running = cluster.job(job.id)
    assert (running.state, running.attempt, running.worker_id) == (job_pb2.RUNNING, 2, "w1")
    assert cluster.workers["w1-again"].alive()
    report("frozen w1 taken over by a new w1: on SIGCONT it killed its engine and exited 1")


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)

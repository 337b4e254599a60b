"""TPE sweeps draw their trials in the sampler process (coordinator/sampler_process.py): a
real child process, driven by a real Scheduler on a real database, as the server runs it.

What must hold: the draws are those of an in-process ask (same seed, same history), and no
trial is asked twice or lost when the child dies, or keeps dying (then the coordinator asks
itself)."""

from __future__ import annotations

import math
import os
import signal

import pytest
from coordinator_helpers import make_spec, wait_for

from tunefleet.coordinator.event_bus import EventBus
from tunefleet.coordinator.sampler_process import MAX_LOSSES
from tunefleet.coordinator.scheduler import Scheduler
from tunefleet.coordinator.store import JobStore
from tunefleet.spec import spec_from_dict, spec_to_dict
from tunefleet.v1 import coordinator_pb2, job_pb2, sweep_pb2

TIMEOUT = 30.0  # the first ask waits for the child to start (a fresh interpreter)


def tpe_sweep(max_trials: int, max_concurrent: int = 2):
    data = spec_to_dict(make_spec("tpe"))
    data["sweep"] = {
        "space": {
            "optimizer.lr": "loguniform(1e-5, 1e-2)",
            "finetune.strategy": ["head_only", "last_k", "full"],
            "finetune.k": {"values": [1, 2], "when": {"finetune.strategy": "last_k"}},
        },
        "algorithm": "tpe",
        "metric": "accuracy",
        "mode": "max",
        "max_trials": max_trials,
        "max_concurrent": max_concurrent,
        "seed": 3,
    }
    return spec_from_dict(data)


def accuracy(spec) -> float:
    """A response surface TPE can learn (best near lr 3e-4, full fine-tuning)."""
    gain = {"head_only": -0.05, "last_k": 0.0, "full": 0.02}[spec.finetune.strategy]
    return 0.9 - 0.05 * (math.log10(spec.optimizer.lr) + 3.5) ** 2 + gain


class Fleet:
    """A Scheduler on its own database and one worker that runs trials to the end."""

    def __init__(self, tmp_path, name: str, *, sampler_process: bool):
        self.store = JobStore(tmp_path / f"{name}.db")
        self.scheduler = Scheduler(
            self.store, EventBus(), lease_timeout_s=3600.0, sampler_process=sampler_process
        )
        self.scheduler.register_worker(
            "w1", hostname="test", resources=coordinator_pb2.WorkerResources(cpus=2)
        )

    def run_trial(self) -> job_pb2.Job:
        job = wait_for(lambda: self.scheduler.acquire("w1", 0.0), timeout=TIMEOUT)
        self.scheduler.finish(
            "w1",
            job.id,
            job.attempt,
            job_pb2.SUCCEEDED,
            summary={"eval_accuracy": accuracy(job.spec)},
        )
        return job

    def sweep(self, sweep_id: str) -> sweep_pb2.Sweep:
        return self.scheduler.sweeps.get(sweep_id)

    def close(self):
        self.scheduler.close()
        self.store.close()


@pytest.fixture
def fleets(tmp_path):
    made: list[Fleet] = []

    def make(name: str, **options) -> Fleet:
        made.append(Fleet(tmp_path, name, **options))
        return made[-1]

    yield make
    for fleet in made:
        fleet.close()


def finished(fleet: Fleet, sweep_id: str) -> sweep_pb2.Sweep:
    return wait_for(
        lambda: (s := fleet.sweep(sweep_id)).state != sweep_pb2.SWEEP_RUNNING and s,
        timeout=TIMEOUT,
    )


def assert_every_trial_once(sweep: sweep_pb2.Sweep, max_trials: int) -> None:
    assert sweep.state == sweep_pb2.SWEEP_SUCCEEDED, sweep.reason
    assert [t.number for t in sweep.trials] == list(range(max_trials))
    assert all(t.trial_state == "COMPLETE" for t in sweep.trials)
    assert len({t.job_id for t in sweep.trials}) == max_trials


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1].startswith("Z")


def kill_sampler(fleet: Fleet, killed: list[int]) -> None:
    """SIGKILLs the running sampler process (a new one: not one killed before)."""
    sweeps = fleet.scheduler.sweeps
    pid = wait_for(
        lambda: sweeps.sampler_pid not in (None, *killed) and sweeps.sampler_pid, timeout=TIMEOUT
    )
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)


def test_the_sampler_process_draws_what_an_in_process_ask_draws(fleets):
    # 16 trials: past TPE's 10 random start-up trials, so the model's draws are compared.
    here = fleets("here", sampler_process=False)
    child = fleets("child", sampler_process=True)
    ids = [f.scheduler.sweeps.submit(tpe_sweep(16)).id for f in (here, child)]
    for _ in range(16):
        here.run_trial()
        child.run_trial()
    a, b = finished(here, ids[0]), finished(child, ids[1])
    assert_every_trial_once(b, 16)
    assert [dict(t.params) for t in b.trials] == [dict(t.params) for t in a.trials]
    assert child.scheduler.sweeps.sampler_pid is not None
    assert here.scheduler.sweeps.sampler_pid is None


def test_a_killed_sampler_process_neither_repeats_nor_loses_a_trial(fleets):
    fleet = fleets("kill", sampler_process=True)
    sweep_id = fleet.scheduler.sweeps.submit(tpe_sweep(14, max_concurrent=3)).id
    killed: list[int] = []
    for n in range(14):
        if n in (4, 9):  # with asks in flight: their replies are lost with the child
            kill_sampler(fleet, killed)
        fleet.run_trial()
    sweep = finished(fleet, sweep_id)
    assert_every_trial_once(sweep, 14)
    # Its later trials were drawn again by a mirror rebuilt from the coordinator's study.
    assert len({t.params["optimizer.lr"] for t in sweep.trials}) == 14


def test_a_sampler_process_that_keeps_dying_leaves_the_asks_to_the_coordinator(fleets):
    fleet = fleets("dies", sampler_process=True)
    sweep_id = fleet.scheduler.sweeps.submit(tpe_sweep(12)).id
    killed: list[int] = []
    for n in range(12):
        if n < MAX_LOSSES:
            kill_sampler(fleet, killed)
        fleet.run_trial()
    assert_every_trial_once(finished(fleet, sweep_id), 12)
    assert fleet.scheduler.sweeps.sampler_pid is None  # not started again


def test_closing_the_scheduler_stops_the_sampler_process(fleets):
    fleet = fleets("close", sampler_process=True)
    fleet.scheduler.sweeps.submit(tpe_sweep(4))
    pid = wait_for(lambda: fleet.scheduler.sweeps.sampler_pid, timeout=TIMEOUT)
    fleet.run_trial()
    fleet.scheduler.close()
    wait_for(lambda: pid_gone(pid), timeout=10)


def test_a_sampler_process_that_cannot_start_leaves_the_asks_to_the_coordinator(
    fleets, monkeypatch
):
    monkeypatch.setattr("sys.executable", "/nonexistent/python3")  # no interpreter there
    fleet = fleets("nostart", sampler_process=True)
    sweep_id = fleet.scheduler.sweeps.submit(tpe_sweep(6)).id
    for _ in range(6):
        fleet.run_trial()
    assert_every_trial_once(finished(fleet, sweep_id), 6)
    assert fleet.scheduler.sweeps.sampler_pid is None

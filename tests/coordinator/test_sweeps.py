"""Sweeps on a real coordinator over real gRPC: trials are ordinary jobs that fake workers
(coordinator_helpers.Worker) run by reporting validation metrics and finishing."""

from __future__ import annotations

import grpc
import pytest
from coordinator_helpers import RPC_TIMEOUT, Worker, make_spec, wait_for

from tunefleet.coordinator import samplers
from tunefleet.coordinator.auth import Role, TokenTable
from tunefleet.coordinator.store import JobStore
from tunefleet.spec import spec_from_dict, spec_to_dict
from tunefleet.status_details import read_details
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2, spec_pb2, sweep_pb2


def sweep_spec(sweep: dict, **base_fields):
    """make_spec's job plus a `sweep:` block, through the YAML shorthand parser."""
    data = spec_to_dict(make_spec("base"))
    data.update(base_fields)
    data["sweep"] = sweep
    return spec_from_dict(data)


GRID = {
    "space": {
        "finetune.strategy": ["head_only", "last_k", "full"],
        "finetune.k": {"values": [1, 2], "when": {"finetune.strategy": "last_k"}},
    },
    "max_concurrent": 2,
}


class Sweeper:
    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)

    def submit(self, spec, key: str = "") -> sweep_pb2.Sweep:
        request = coordinator_pb2.SubmitSweepRequest(spec=spec, idempotency_key=key)
        return self.stub.SubmitSweep(request, timeout=RPC_TIMEOUT)

    def get(self, sweep_id: str) -> sweep_pb2.Sweep:
        request = coordinator_pb2.GetSweepRequest(sweep_id=sweep_id)
        return self.stub.GetSweep(request, timeout=RPC_TIMEOUT)

    def list(self) -> list[sweep_pb2.Sweep]:
        request = coordinator_pb2.ListSweepsRequest()
        return list(self.stub.ListSweeps(request, timeout=RPC_TIMEOUT).sweeps)

    def cancel(self, sweep_id: str) -> sweep_pb2.Sweep:
        request = coordinator_pb2.CancelSweepRequest(sweep_id=sweep_id, reason="enough")
        return self.stub.CancelSweep(request, timeout=RPC_TIMEOUT)

    def close(self):
        self.channel.close()


@pytest.fixture
def sweeper(coordinator):
    s = Sweeper(coordinator.address)
    yield s
    s.close()


def eval_metrics(step: int, accuracy: float) -> job_pb2.Event:
    return job_pb2.Event(
        metrics=job_pb2.Metrics(phase="eval", step=step, values={"accuracy": accuracy})
    )


def run_trial(worker: Worker, accuracy: float, steps=(1, 2)) -> str:
    """Takes the next queued trial, reports its metrics and finishes it SUCCEEDED."""
    assignment = wait_for(lambda: worker.acquire(0.2))
    job = assignment.job
    for step in steps:
        worker.report(job.id, assignment.attempt, eval_metrics(step, accuracy))
    worker.finish(job.id, assignment.attempt, summary={"eval_accuracy": accuracy})
    return job.id


def test_a_reused_idempotency_key_with_another_sweep_is_refused(sweeper):
    first = sweeper.submit(sweep_spec(GRID), key="grid-1")
    assert sweeper.submit(sweep_spec(GRID), key="grid-1").id == first.id  # a retry
    with pytest.raises(grpc.RpcError) as e:
        sweeper.submit(sweep_spec({**GRID, "max_concurrent": 1}), key="grid-1")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert f"already submitted {first.id}, from a different spec (it differs in sweep)" in (
        e.value.details()
    )
    assert [s.id for s in sweeper.list()] == [first.id]


def test_bad_space_is_refused_with_every_path(sweeper):
    spec = sweep_spec(
        {
            "space": {
                "optimizer.lr": "loguniform(-1, 1)",
                "optimizer.nope": [1, 2],
                "finetune.strategy": ["full", "bogus"],
            },
            "algorithm": "tpe",
            "pruner": "sometimes",
        }
    )
    with pytest.raises(grpc.RpcError) as e:
        sweeper.submit(spec)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    paths = {v.path for v in read_details(e.value).field_violations}
    assert {"sweep.space.optimizer.lr", "sweep.space.optimizer.nope", "sweep.pruner"} <= paths


def test_a_bad_range_end_is_refused_as_a_job_would_be(sweeper):
    # Each end of a range is validated as a job: lr must be > 0.
    spec = sweep_spec({"space": {"optimizer.lr": "uniform(-0.1, 0.1)"}, "algorithm": "random"})
    with pytest.raises(grpc.RpcError) as e:
        sweeper.submit(spec)
    (violation,) = read_details(e.value).field_violations
    assert violation.path == "sweep.space.optimizer.lr"
    assert "must be > 0" in violation.message


def test_a_job_file_with_a_sweep_block_is_not_a_job(client):
    with pytest.raises(grpc.RpcError) as e:
        client.submit(sweep_spec(GRID))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grid_runs_exactly_its_points_within_max_concurrent(coordinator, sweeper, client):
    sweep = sweeper.submit(sweep_spec(GRID))
    assert sweep.grid_size == 4 and sweep.spec.sweep.max_trials == 4
    assert len(sweep.trials) == 2  # max_concurrent
    worker = Worker(client.stub, "w1")
    accuracies = iter([0.5, 0.9, 0.7, 0.6])
    while sweeper.get(sweep.id).state == sweep_pb2.SWEEP_RUNNING:
        got = sweeper.get(sweep.id)
        active = [t for t in got.trials if t.job_state in (job_pb2.QUEUED, job_pb2.RUNNING)]
        assert len(active) <= 2
        run_trial(worker, next(accuracies))
    final = sweeper.get(sweep.id)
    assert final.state == sweep_pb2.SWEEP_SUCCEEDED, final.reason
    points = sorted(tuple(sorted(t.params.items())) for t in final.trials)
    assert points == sorted(
        [
            (("finetune.strategy", "head_only"),),
            (("finetune.k", "1"), ("finetune.strategy", "last_k")),
            (("finetune.k", "2"), ("finetune.strategy", "last_k")),
            (("finetune.strategy", "full"),),
        ]
    )
    assert all(t.trial_state == "COMPLETE" for t in final.trials)
    assert final.best_value == 0.9 and final.best_job_id == final.trials[1].job_id
    # Each trial is an ordinary job with its resolved spec.
    job = client.get(final.trials[0].job_id)
    assert job.spec.name == "base-t0" and job.spec.labels["sweep"] == sweep.id
    assert job.spec.finetune.strategy == final.trials[0].params["finetune.strategy"]
    assert [s.id for s in sweeper.list()] == [sweep.id]


@pytest.mark.parametrize("pruner", ["median", "asha"])
def test_the_pruner_stops_a_trial_through_cancel_and_it_ends_pruned(sweeper, client, pruner):
    spec = sweep_spec(
        {
            "space": {"optimizer.lr": [0.001, 0.002, 0.003, 0.004]},
            "pruner": pruner,
            "max_concurrent": 1,
        }
    )
    sweep = sweeper.submit(spec)
    worker = Worker(client.stub, "w1")
    run_trial(worker, 0.8, steps=(1, 2, 3))
    run_trial(worker, 0.9, steps=(1, 2, 3))  # better than the first: ASHA keeps it too
    assignment = wait_for(lambda: worker.acquire(0.2))
    job_id = assignment.job.id
    worker.report(job_id, assignment.attempt, eval_metrics(1, 0.1))
    assert job_id in worker.heartbeat(job_id).cancel_job_ids  # the normal cancel path
    worker.finish(job_id, assignment.attempt, job_pb2.CANCELLED)
    job = client.get(job_id)
    assert job.state == job_pb2.PRUNED, job.reason
    assert f"pruned by the sweep's {pruner} pruner at step 1" in job.reason
    got = sweeper.get(sweep.id)
    assert got.trials[2].trial_state == "PRUNED"
    assert dict(got.trials[2].intermediate) == {1: 0.1}
    # The sweep goes on with its last trial.
    run_trial(worker, 0.95)
    final = sweeper.get(sweep.id)
    assert final.state == sweep_pb2.SWEEP_SUCCEEDED
    assert final.best_trial == 3 and "1 pruned" in final.reason


def test_a_pruned_trial_holds_its_slot_until_its_job_stops(sweeper, client):
    """max_concurrent counts a pruned trial whose job is still stopping: another trial's
    end then makes one new trial, not two."""
    lrs = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006]
    spec = sweep_spec({"space": {"optimizer.lr": lrs}, "pruner": "median", "max_concurrent": 2})
    sweep = sweeper.submit(spec)
    first, second = Worker(client.stub, "w1"), Worker(client.stub, "w2")
    run_trial(first, 0.9, steps=(1, 2, 3))
    run_trial(first, 0.9, steps=(1, 2, 3))  # two finished: the median pruner judges now
    pruned = wait_for(lambda: first.acquire(0.2))
    other = wait_for(lambda: second.acquire(0.2))
    first.report(pruned.job.id, pruned.attempt, eval_metrics(1, 0.1))
    assert pruned.job.id in first.heartbeat(pruned.job.id).cancel_job_ids  # stopping
    second.finish(other.job.id, other.attempt, summary={"eval_accuracy": 0.95})
    # The pruned trial's job still runs: it holds one of the two slots.
    assert len(sweeper.get(sweep.id).trials) == 5
    first.finish(pruned.job.id, pruned.attempt, job_pb2.CANCELLED)
    assert len(sweeper.get(sweep.id).trials) == 6  # its slot is free once it stopped
    assert sweeper.get(sweep.id).trials[2].trial_state == "PRUNED"


def test_asha_prunes_while_every_trial_still_trains(sweeper, client):
    """A sweep spread over a fleet: all four trials train at once and none has finished.
    ASHA's first rung is the first validation, so the three that trail the first report
    there are stopped at once (optuna's own 'auto' rung waits for a finished trial; on a
    fleet as wide as the sweep it would prune nothing)."""
    space = {"optimizer.lr": [0.001, 0.002, 0.003, 0.004]}
    sweep = sweeper.submit(sweep_spec({"space": space, "pruner": "asha", "max_concurrent": 4}))
    workers = [Worker(client.stub, f"w{i}") for i in range(4)]
    running = [wait_for(lambda w=w: w.acquire(0.2)) for w in workers]
    accuracies = [0.9, 0.5, 0.95, 0.3]  # the first to report leads; the third beats it
    for worker, assignment, accuracy in zip(workers, running, accuracies, strict=True):
        worker.report(assignment.job.id, assignment.attempt, eval_metrics(50, accuracy))
    stopped = [
        a.job.id in w.heartbeat(a.job.id).cancel_job_ids
        for w, a in zip(workers, running, strict=True)
    ]
    assert stopped == [False, True, False, True]
    for worker, assignment, accuracy in zip(workers, running, accuracies, strict=True):
        if accuracy in (0.5, 0.3):
            worker.finish(assignment.job.id, assignment.attempt, job_pb2.CANCELLED)
            job = client.get(assignment.job.id)
            assert job.state == job_pb2.PRUNED
            assert "pruned by the sweep's asha pruner at step 50" in job.reason
    states = {t.job_id: t.trial_state for t in sweeper.get(sweep.id).trials}
    assert [states[a.job.id] for a in running[1::2]] == ["PRUNED", "PRUNED"]
    # Later reports are judged at the same rungs: the rung at 4x the first validation.
    lead, best = running[0], running[2]
    workers[2].report(best.job.id, best.attempt, eval_metrics(200, 0.96))
    workers[0].report(lead.job.id, lead.attempt, eval_metrics(200, 0.91))
    assert lead.job.id in workers[0].heartbeat(lead.job.id).cancel_job_ids
    assert best.job.id not in workers[2].heartbeat(best.job.id).cancel_job_ids


def test_cancel_sweep_cancels_its_queued_and_running_trials(sweeper, client):
    sweep = sweeper.submit(sweep_spec(GRID))
    worker = Worker(client.stub, "w1")
    assignment = wait_for(lambda: worker.acquire(0.2))
    cancelled = sweeper.cancel(sweep.id)
    assert cancelled.state == sweep_pb2.SWEEP_CANCELLED
    running, queued = (
        assignment.job.id,
        next(t.job_id for t in cancelled.trials if t.job_id != assignment.job.id),
    )
    assert client.get(queued).state == job_pb2.CANCELLED
    assert running in worker.heartbeat(running).cancel_job_ids
    worker.finish(running, assignment.attempt, job_pb2.CANCELLED)
    assert len(sweeper.get(sweep.id).trials) == 2  # no more were created
    with pytest.raises(grpc.RpcError) as e:
        sweeper.cancel(sweep.id)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == f"sweep {sweep.id} already CANCELLED"
    with pytest.raises(grpc.RpcError) as e:
        sweeper.get("sweep-nope")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_restart_neither_repeats_nor_loses_a_trial(start_coordinator, tmp_path):
    spec = sweep_spec({"space": {"optimizer.lr": "loguniform(1e-5, 1e-2)"}, "max_trials": 5,
                       "algorithm": "random", "max_concurrent": 2})  # fmt: skip
    first = start_coordinator()
    sweeper = Sweeper(first.address)
    sweep = sweeper.submit(spec)
    worker = Worker(sweeper.stub, "w1")
    finished = run_trial(worker, 0.6)
    running = wait_for(lambda: worker.acquire(0.2)).job.id
    sweeper.close()
    first.stop(grace=0)
    # As if the coordinator died between storing a trial's end and telling its sweep: the
    # job is SUCCEEDED in the jobs table, its trial still RUNNING in the sweep's.
    store = JobStore(tmp_path / "coordinator.db")
    store.transition(running, job_pb2.SUCCEEDED, "finished", summary={"eval_accuracy": 0.8})
    store.close()
    second = start_coordinator()
    sweeper = Sweeper(second.address)
    worker = Worker(sweeper.stub, "w1")
    got = sweeper.get(sweep.id)
    # Told on start, and the next trial asked: numbers 0-3, none twice.
    assert [t.number for t in got.trials] == [0, 1, 2, 3]
    assert got.trials[0].job_id == finished and got.trials[0].trial_state == "COMPLETE"
    (told,) = [t for t in got.trials if t.job_id == running]
    assert told.trial_state == "COMPLETE" and told.value == 0.8
    assert len({t.job_id for t in got.trials}) == 4
    while sweeper.get(sweep.id).state == sweep_pb2.SWEEP_RUNNING:
        run_trial(worker, 0.7)
    final = sweeper.get(sweep.id)
    assert [t.number for t in final.trials] == [0, 1, 2, 3, 4]
    assert len({t.job_id for t in final.trials}) == 5
    assert len({t.params["optimizer.lr"] for t in final.trials}) == 5  # no value drawn twice
    assert all(t.trial_state == "COMPLETE" for t in final.trials)
    sweeper.close()


def test_asha_judges_reports_after_a_restart_against_those_before_it(start_coordinator):
    """The values each trial had at each rung are the sweep's state too: after a kill, a
    trial that trails one reported before the restart is still pruned at that rung."""
    spec = sweep_spec({"space": {"optimizer.lr": [0.001, 0.002, 0.003, 0.004]},
                       "pruner": "asha", "max_concurrent": 4})  # fmt: skip
    first = start_coordinator()
    sweeper = Sweeper(first.address)
    sweep = sweeper.submit(spec)
    workers = [Worker(sweeper.stub, f"w{i}") for i in range(2)]
    lead, trailing = (wait_for(lambda w=w: w.acquire(0.2)) for w in workers)
    workers[0].report(lead.job.id, lead.attempt, eval_metrics(50, 0.9))
    sweeper.close()
    first.stop(grace=0)

    second = start_coordinator()
    sweeper = Sweeper(second.address)
    worker = workers[1]
    worker.stub = sweeper.stub  # the same worker, on: it has not restarted
    worker.report(trailing.job.id, trailing.attempt, eval_metrics(50, 0.5))
    assert trailing.job.id in worker.heartbeat(trailing.job.id).cancel_job_ids
    states = {t.job_id: t.trial_state for t in sweeper.get(sweep.id).trials}
    assert states[trailing.job.id] == "PRUNED" and states[lead.job.id] == "RUNNING"
    sweeper.close()


def test_max_concurrent_leaves_room_for_other_jobs(sweeper, client):
    spec = sweep_spec({"space": {"optimizer.lr": [0.001, 0.002, 0.003]}, "max_concurrent": 1})
    sweep = sweeper.submit(spec)
    other = client.submit(make_spec("someone-else"))
    worker = Worker(client.stub, "w1")
    first = run_trial(worker, 0.5)
    assert first == sweeper.get(sweep.id).trials[0].job_id
    # The sweep's next trial was queued after the other user's job: that one runs first.
    assignment = wait_for(lambda: worker.acquire(0.2))
    assert assignment.job.id == other.id


def test_hostile_sweep_protos_are_refused_with_paths(sweeper):
    spec = make_spec("base")
    for i in range(40):
        spec.sweep.space[f"train.seed{i}"].type = "choice"
    with pytest.raises(grpc.RpcError) as e:
        sweeper.submit(spec)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 32 fields" in e.value.details()

    spec = make_spec("base")
    spec.sweep.space["train.epochs"].type = "int"
    spec.sweep.space["train.epochs"].low = 1
    spec.sweep.space["train.epochs"].high = 1e30
    spec.sweep.space["train.seed"].values.append("1e30")
    spec.sweep.space["train.seed"].type = "choice"
    spec.sweep.max_trials = 10**6
    with pytest.raises(grpc.RpcError) as e:
        sweeper.submit(spec)
    paths = {v.path for v in read_details(e.value).field_violations}
    assert paths == {
        "sweep.space.train.epochs",
        "sweep.space.train.seed.values[0]",
        "sweep.max_trials",
    }


@pytest.mark.parametrize("algorithm", ["grid", "random", "tpe"])
def test_a_negative_seed_is_refused_and_leaves_no_sweep(sweeper, algorithm):
    # It used to pass the validator, then fail the first ask (numpy takes no negative
    # seed): INTERNAL for grid and random, and a TPE sweep RUNNING with no trial, for good.
    spec = sweep_spec({"space": {"optimizer.lr": [1e-3, 1e-4]}, "algorithm": algorithm})
    spec.sweep.seed = -1
    with pytest.raises(grpc.RpcError) as e:
        sweeper.submit(spec)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.path for v in read_details(e.value).field_violations] == ["sweep.seed"]
    assert sweeper.list() == []


def test_a_sweep_whose_first_ask_fails_leaves_no_sweep_and_no_job(sweeper, client, monkeypatch):
    """The sweep and its first trials are one commit: a sampler that fails its first ask
    (an optuna error, a bug) leaves nothing RUNNING with no trial behind."""

    def broken(trial, s):
        raise RuntimeError("the sampler broke")

    monkeypatch.setattr(samplers, "suggest", broken)
    spec = sweep_spec({"space": {"optimizer.lr": "loguniform(1e-4, 1e-2)"}, "algorithm": "random"})
    with pytest.raises(grpc.RpcError) as e:
        sweeper.submit(spec)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert sweeper.list() == [] and client.list_jobs() == []
    monkeypatch.undo()
    assert len(sweeper.submit(spec).trials) == 2  # max_concurrent 2: a fresh one works


def test_trials_of_a_failed_source_job_fail_and_the_sweep_ends_failed(sweeper, client):
    source = client.submit(make_spec("pretrain"))
    client.cancel(source.id)
    data = spec_to_dict(make_spec("base", source_job=source.id))
    data["sweep"] = {"space": {"optimizer.lr": [0.001, 0.002]}}
    sweep = sweeper.submit(spec_from_dict(data))
    assert sweep.state == sweep_pb2.SWEEP_FAILED, sweep.reason
    assert [t.trial_state for t in sweep.trials] == ["FAIL", "FAIL"]
    assert all(t.job_state == job_pb2.FAILED for t in sweep.trials)
    assert "none reported accuracy" in sweep.reason


def test_users_see_and_cancel_only_their_own_sweeps(start_coordinator):
    tokens = TokenTable.from_entries(
        [
            {"name": "alice", "role": Role.USER.value, "token": "a" * 32},
            {"name": "bob", "role": Role.USER.value, "token": "b" * 32},
        ]
    )
    server = start_coordinator(tokens=tokens, insecure=True)
    channel = grpc.insecure_channel(server.address)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)

    def as_user(token):
        return (("authorization", f"Bearer {token}"),)

    alice, bob = as_user("a" * 32), as_user("b" * 32)
    request = coordinator_pb2.SubmitSweepRequest(spec=sweep_spec(GRID))
    sweep = stub.SubmitSweep(request, metadata=alice, timeout=RPC_TIMEOUT)
    assert sweep.submitter == "alice"
    get = coordinator_pb2.GetSweepRequest(sweep_id=sweep.id)
    assert stub.GetSweep(get, metadata=alice, timeout=RPC_TIMEOUT).id == sweep.id
    for call, req in (
        (stub.GetSweep, get),
        (stub.CancelSweep, coordinator_pb2.CancelSweepRequest(sweep_id=sweep.id)),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call(req, metadata=bob, timeout=RPC_TIMEOUT)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    listed = stub.ListSweeps(coordinator_pb2.ListSweepsRequest(), metadata=bob, timeout=RPC_TIMEOUT)
    assert list(listed.sweeps) == []
    # The trials are alice's jobs.
    job = coordinator_pb2.GetJobRequest(job_id=sweep.trials[0].job_id)
    assert stub.GetJob(job, metadata=alice, timeout=RPC_TIMEOUT).submitter == "alice"
    channel.close()


def chained_on(source_id: str) -> spec_pb2.JobSpec:
    spec = make_spec("chained")
    spec.model.source, spec.model.name, spec.model.job = "job", "", source_id
    return spec


def test_a_job_chained_on_a_running_sweep_waits_then_starts_from_its_best_model(sweeper, client):
    sweep = sweeper.submit(
        sweep_spec({"space": {"optimizer.lr": [0.001, 0.002]}, "max_concurrent": 1})
    )
    chained = client.submit(chained_on(sweep.id))
    assert chained.state == job_pb2.QUEUED
    worker = Worker(client.stub, "w1")

    def trial(accuracy: float) -> str:
        assignment = wait_for(lambda: worker.acquire(0.2))
        job = assignment.job
        assert job.id != chained.id, "the chained job ran before its sweep ended"
        worker.finish(
            job.id,
            assignment.attempt,
            summary={"eval_accuracy": accuracy},
            artifacts={"model": f"/runs/{job.id}/model"},
        )
        return job.id

    best = trial(0.9)
    reason = wait_for(lambda: client.get(chained.id).reason.startswith("waiting for") and
                      client.get(chained.id).reason)  # fmt: skip
    assert reason == f"waiting for source sweep {sweep.id} to end and pick its best trial"
    trial(0.7)
    assert sweeper.get(sweep.id).best_job_id == best
    # The sweep's model is its best trial's: the chained job is placed with that folder.
    assignment = wait_for(lambda: worker.acquire(0.2))
    assert assignment.job.id == chained.id
    assert assignment.job.spec.model.name == f"/runs/{best}/model"


def test_a_job_chained_on_a_finished_sweep_or_a_cancelled_one(sweeper, client):
    with pytest.raises(grpc.RpcError) as e:
        client.submit(chained_on("sweep-00000000"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = read_details(e.value).field_violations[0]
    assert (violation.path, violation.message) == ("model.job", "sweep sweep-00000000 not found")
    sweep = sweeper.submit(sweep_spec({"space": {"optimizer.lr": [0.001]}}))
    worker = Worker(client.stub, "w1")
    trial = wait_for(lambda: worker.acquire(0.2))
    worker.finish(trial.job.id, trial.attempt, summary={"eval_accuracy": 0.8},
                  artifacts={"model_uri": "s3://runs/best/model"})  # fmt: skip
    chained = client.submit(chained_on(sweep.id))  # ended: starts at once from its best
    assignment = wait_for(lambda: worker.acquire(0.2))
    assert assignment.job.id == chained.id
    assert assignment.job.spec.model.name == "s3://runs/best/model"
    # A sweep cancelled before any trial finished has no model: its dependents fail.
    cancelled = sweeper.submit(sweep_spec({"space": {"optimizer.lr": [0.001, 0.002]}}))
    waiting = client.submit(chained_on(cancelled.id))
    sweeper.cancel(cancelled.id)
    job = wait_for(lambda: (j := client.get(waiting.id)).state == job_pb2.FAILED and j)
    assert job.reason == f"source sweep {cancelled.id} ended CANCELLED"


def test_a_sweeps_backlog_does_not_make_another_users_job_wait(start_coordinator):
    """Placement interleaves submitters (fewest jobs placed first): bob's job, submitted
    after alice's sweep queued its trials, takes the second free worker, not the last."""
    tokens = TokenTable.from_entries(
        [
            {"name": "alice", "role": Role.USER.value, "token": "a" * 32},
            {"name": "bob", "role": Role.USER.value, "token": "b" * 32},
            {"name": "fleet", "role": Role.WORKER.value, "token": "w" * 32},
        ]
    )
    server = start_coordinator(tokens=tokens, insecure=True)
    channel = grpc.insecure_channel(server.address)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    alice, bob, fleet = ((("authorization", f"Bearer {c * 32}"),) for c in "abw")
    lrs = [0.001, 0.002, 0.003, 0.004]
    spec = sweep_spec({"space": {"optimizer.lr": lrs}, "max_concurrent": 4})
    request = coordinator_pb2.SubmitSweepRequest(spec=spec)
    sweep = stub.SubmitSweep(request, metadata=alice, timeout=RPC_TIMEOUT)
    assert len(sweep.trials) == 4
    request = coordinator_pb2.SubmitJobRequest(spec=make_spec("bobs-job"))
    bobs = stub.SubmitJob(request, metadata=bob, timeout=RPC_TIMEOUT)

    placed = []
    for n in range(3):
        worker_id = f"w{n}"
        register = coordinator_pb2.RegisterWorkerRequest(
            worker_id=worker_id, resources=coordinator_pb2.WorkerResources(cpus=2)
        )
        stub.RegisterWorker(register, metadata=fleet, timeout=RPC_TIMEOUT)
        acquire = coordinator_pb2.AcquireJobRequest(worker_id=worker_id, wait_seconds=0.2)
        response = stub.AcquireJob(acquire, metadata=fleet, timeout=RPC_TIMEOUT)
        placed.append(response.assignment.job)

    # First come first served would give alice all three workers.
    assert [job.submitter for job in placed] == ["alice", "bob", "alice"]
    assert placed[1].id == bobs.id
    assert [placed[0].id, placed[2].id] == [t.job_id for t in sweep.trials[:2]]
    channel.close()

"""A sweep survives kill -9 of its coordinator (a real child process): on restart with the
same database the study is rebuilt from the coordinator's tables, and no trial is asked
twice or lost, whatever the kill interrupted (a trial's end, the next trial's creation).
With TPE the trials are drawn in the coordinator's sampler process, which must die with
it (no orphan) while its asks in flight are lost and asked again."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from fault_helpers import children, pid_alive, wait_for

from tunefleet.spec import spec_from_dict
from tunefleet.v1 import coordinator_pb2, job_pb2, sweep_pb2

RPC_TIMEOUT = 10.0
MAX_TRIALS = 6


def sweep_spec(tmp_path, algorithm: str):
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,pos\nbad,neg\n")
    return spec_from_dict(
        {
            "name": "kill-sweep",
            "model": {"source": "hf", "name": "prajjwal1/bert-tiny"},
            "data": {"source": "csv", "train": str(train)},
            "sweep": {
                "space": {
                    "optimizer.lr": "loguniform(1e-5, 1e-2)",
                    "finetune.strategy": ["head_only", "full"],
                },
                "algorithm": algorithm,
                "max_trials": MAX_TRIALS,
                "max_concurrent": 2,
            },
        }
    )


class FakeWorker:
    """Takes trials and ends them with a validation accuracy, over real gRPC."""

    def __init__(self, stub):
        self.stub = stub
        self.register()

    def register(self):
        request = coordinator_pb2.RegisterWorkerRequest(
            worker_id="w1",
            hostname="test-host",
            resources=coordinator_pb2.WorkerResources(gpus=0, cpus=2),
        )
        self.stub.RegisterWorker(request, timeout=RPC_TIMEOUT, wait_for_ready=True)

    def take(self):
        request = coordinator_pb2.AcquireJobRequest(worker_id="w1", wait_seconds=2)
        response = self.stub.AcquireJob(request, timeout=RPC_TIMEOUT)
        return response.assignment if response.HasField("assignment") else None

    def finish_request(self, assignment, accuracy: float):
        job = assignment.job
        metrics = job_pb2.Metrics(phase="eval", step=1, values={"accuracy": accuracy})
        self.stub.ReportEvents(
            coordinator_pb2.ReportEventsRequest(
                worker_id="w1",
                job_id=job.id,
                attempt=assignment.attempt,
                events=[job_pb2.Event(metrics=metrics)],
            ),
            timeout=RPC_TIMEOUT,
        )
        return coordinator_pb2.FinishJobRequest(
            worker_id="w1",
            job_id=job.id,
            attempt=assignment.attempt,
            state=job_pb2.SUCCEEDED,
            summary={"eval_accuracy": accuracy},
        )


@pytest.mark.parametrize("algorithm", ["random", "tpe"])
def test_kill_9_mid_sweep_neither_repeats_nor_loses_a_trial(cluster, tmp_path, algorithm):
    cluster.start_coordinator()
    sweep = cluster.stub.SubmitSweep(
        coordinator_pb2.SubmitSweepRequest(spec=sweep_spec(tmp_path, algorithm)),
        timeout=RPC_TIMEOUT,
    )
    worker = FakeWorker(cluster.stub)
    kills = 0
    seen: list[int] = []
    for round_ in range(40):
        got = cluster.stub.GetSweep(
            coordinator_pb2.GetSweepRequest(sweep_id=sweep.id), timeout=RPC_TIMEOUT
        )
        if got.state != sweep_pb2.SWEEP_RUNNING:
            break
        assignment = worker.take()
        if assignment is None:
            continue
        request = worker.finish_request(assignment, 0.5 + round_ / 100)
        if kills < 3 and round_ % 2 == 0:
            # The kill lands while (or just after) the finish is told and the next trial
            # is asked: the coordinator may or may not have stored either.
            future = cluster.stub.FinishJob.future(request, timeout=RPC_TIMEOUT)
            samplers = children(cluster.coordinator.pid)  # TPE's sampler process
            seen += samplers
            cluster.kill_coordinator()
            for pid in samplers:  # it reads EOF from its dead coordinator and exits
                wait_for(lambda p=pid: not pid_alive(p), 10, f"sampler process {pid} to exit")
            with contextlib.suppress(grpc.RpcError):
                future.result()
            kills += 1
            cluster.start_coordinator()
            worker.register()  # a restarted worker: its unfinished trial is queued again
        else:
            cluster.stub.FinishJob(request, timeout=RPC_TIMEOUT)
    assert kills == 3
    if algorithm == "tpe":  # the sweep's asks went through the sampler processes
        assert seen
    final = cluster.stub.GetSweep(
        coordinator_pb2.GetSweepRequest(sweep_id=sweep.id), timeout=RPC_TIMEOUT
    )
    assert final.state == sweep_pb2.SWEEP_SUCCEEDED, final.reason
    assert [t.number for t in final.trials] == list(range(MAX_TRIALS))
    assert all(t.trial_state == "COMPLETE" for t in final.trials)
    # Every trial has its own job, and the sweep made no job that is not a trial.
    trial_jobs = [t.job_id for t in final.trials]
    assert len(set(trial_jobs)) == MAX_TRIALS
    # (ListJobs has summaries without labels: trials are named after the sweep.)
    sweep_jobs = [j.id for j in cluster.jobs() if j.spec.name.startswith("kill-sweep-t")]
    assert sorted(sweep_jobs) == sorted(trial_jobs)
    for t in final.trials:
        job = cluster.job(t.job_id)
        assert job.state == job_pb2.SUCCEEDED
        assert job.spec.labels["trial"] == str(t.number)
        assert f"{job.spec.optimizer.lr!r}" == t.params["optimizer.lr"]
    # The restarted studies drew new values, not the first ones again.
    assert len({t.params["optimizer.lr"] for t in final.trials}) == MAX_TRIALS

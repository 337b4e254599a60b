"""Helpers for the coordinator tests: specs, a worker-side client, event collection.

Everything talks to a real coordinator over real gRPC; nothing of ours is mocked.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2, spec_pb2

RPC_TIMEOUT = 10.0


def make_spec(
    name: str = "job", *, gpus: int = 0, priority: int = 0, source_job: str = ""
) -> spec_pb2.JobSpec:
    """A valid spec (paths are not checked: the coordinator runs with check_paths=False)."""
    spec = spec_pb2.JobSpec(
        name=name,
        model=spec_pb2.ModelSpec(source="hf", name="/models/tiny-bert"),
        data=spec_pb2.DataSpec(source="csv", train="/data/train.csv", eval="/data/eval.csv"),
    )
    if source_job:
        spec.model.Clear()
        spec.model.source = "job"
        spec.model.job = source_job
    spec.resources.gpus = gpus
    spec.priority = priority
    return spec


def log_event(message: str, level: str = "info") -> job_pb2.Event:
    return job_pb2.Event(log=job_pb2.LogLine(level=level, message=message))


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02):
    """Polls `predicate` until it returns something truthy; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class Client:
    """The client half of the API with short deadlines, so a broken server fails fast."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)

    def submit(self, spec: spec_pb2.JobSpec, key: str = "") -> job_pb2.Job:
        request = coordinator_pb2.SubmitJobRequest(spec=spec, idempotency_key=key)
        return self.stub.SubmitJob(request, timeout=RPC_TIMEOUT)

    def get(self, job_id: str) -> job_pb2.Job:
        return self.stub.GetJob(coordinator_pb2.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT)

    def cancel(self, job_id: str, reason: str = "") -> job_pb2.Job:
        request = coordinator_pb2.CancelJobRequest(job_id=job_id, reason=reason)
        return self.stub.CancelJob(request, timeout=RPC_TIMEOUT)

    def events(
        self, job_id: str, *, after_seq: int = 0, follow: bool = False, timeout: float = RPC_TIMEOUT
    ) -> list[job_pb2.Event]:
        request = coordinator_pb2.StreamEventsRequest(
            job_id=job_id, after_seq=after_seq, follow=follow
        )
        return list(self.stub.StreamEvents(request, timeout=timeout))

    def list_jobs(self, states=(), limit: int = 0) -> list[job_pb2.Job]:
        request = coordinator_pb2.ListJobsRequest(states=states, limit=limit)
        return list(self.stub.ListJobs(request, timeout=RPC_TIMEOUT).jobs)

    def workers(self) -> dict[str, coordinator_pb2.Worker]:
        response = self.stub.ListWorkers(coordinator_pb2.ListWorkersRequest(), timeout=RPC_TIMEOUT)
        return {w.id: w for w in response.workers}

    def close(self) -> None:
        self.channel.close()


class Worker:
    """The worker half of the API, driven step by step by a test."""

    def __init__(self, stub: coordinator_pb2_grpc.CoordinatorStub, worker_id: str, gpus: int = 0):
        self.stub = stub
        self.worker_id = worker_id
        self.gpus = gpus
        self.register()

    def register(self) -> coordinator_pb2.RegisterWorkerResponse:
        request = coordinator_pb2.RegisterWorkerRequest(
            worker_id=self.worker_id,
            hostname="test-host",
            resources=coordinator_pb2.WorkerResources(gpus=self.gpus, cpus=2),
        )
        return self.stub.RegisterWorker(request, timeout=RPC_TIMEOUT)

    def heartbeat(self, *running: str) -> coordinator_pb2.HeartbeatResponse:
        request = coordinator_pb2.HeartbeatRequest(
            worker_id=self.worker_id, running_job_ids=running
        )
        return self.stub.Heartbeat(request, timeout=RPC_TIMEOUT)

    def acquire(self, wait: float = 0.2) -> coordinator_pb2.Assignment | None:
        request = coordinator_pb2.AcquireJobRequest(worker_id=self.worker_id, wait_seconds=wait)
        response = self.stub.AcquireJob(request, timeout=wait + RPC_TIMEOUT)
        return response.assignment if response.HasField("assignment") else None

    def report(self, job_id: str, attempt: int, *events: job_pb2.Event, batch: int = 0) -> int:
        request = coordinator_pb2.ReportEventsRequest(
            worker_id=self.worker_id,
            job_id=job_id,
            attempt=attempt,
            events=events,
            batch_seq=batch,
        )
        return self.stub.ReportEvents(request, timeout=RPC_TIMEOUT).last_seq

    def finish(self, job_id: str, attempt: int, state: int = job_pb2.SUCCEEDED, **fields) -> None:
        request = coordinator_pb2.FinishJobRequest(
            worker_id=self.worker_id, job_id=job_id, attempt=attempt, state=state, **fields
        )
        self.stub.FinishJob(request, timeout=RPC_TIMEOUT)

    def release(self, job_id: str, attempt: int, reason: str = "") -> None:
        request = coordinator_pb2.ReleaseJobRequest(
            worker_id=self.worker_id, job_id=job_id, attempt=attempt, reason=reason
        )
        self.stub.ReleaseJob(request, timeout=RPC_TIMEOUT)


def state_changes(events: list[job_pb2.Event]) -> list[tuple[str, str]]:
    return [
        (job_pb2.JobState.Name(e.state_change.state), e.state_change.reason)
        for e in events
        if e.WhichOneof("kind") == "state_change"
    ]


def train_metrics(step: int, phase: str = "train") -> job_pb2.Event:
    return job_pb2.Event(metrics=job_pb2.Metrics(phase=phase, step=step))


def metric_steps(events: list[job_pb2.Event], phase: str = "train") -> list[int]:
    return [
        e.metrics.step
        for e in events
        if e.WhichOneof("kind") == "metrics" and e.metrics.phase == phase
    ]

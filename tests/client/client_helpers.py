"""Helpers for the client tests (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import socket

import grpc
import pytest

from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2

# The problems in conftest.bad_yaml, in the order the validator reports them.
BAD_PATHS = ["model.name", "data.train", "optimizer.name", "optimizer.lr", "train.epochs"]
# What submit refuses: a file this machine lacks (data.train) is the workers' path, a note.
BAD_SUBMIT_PATHS = [p for p in BAD_PATHS if p != "data.train"]


def has_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def coordinator_available() -> bool:
    if not has_module("tunefleet.coordinator"):
        return False
    import tunefleet.coordinator as c

    return hasattr(c, "start_server")


needs_coordinator = pytest.mark.skipif(
    not coordinator_available(),
    reason="tunefleet.coordinator.start_server is not importable yet",
)


def unused_port() -> int:
    """A port nothing listens on (bound then released; nobody else races for it here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ScriptedWorker:
    """The worker side of the protocol, driven step by step by a test."""

    def __init__(self, address: str, worker_id: str = "w-test"):
        self.address = address
        self.worker_id = worker_id
        self.channel = grpc.insecure_channel(address)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.register()

    def register(self) -> None:
        self.stub.RegisterWorker(
            coordinator_pb2.RegisterWorkerRequest(
                worker_id=self.worker_id,
                hostname="test-host",
                resources=coordinator_pb2.WorkerResources(gpus=0, cpus=1),
            ),
            timeout=5,
        )

    def acquire(self) -> tuple[str, int]:
        response = self.stub.AcquireJob(
            coordinator_pb2.AcquireJobRequest(worker_id=self.worker_id, wait_seconds=5),
            timeout=10,
        )
        assert response.HasField("assignment"), "no job was assigned"
        return response.assignment.job.id, response.assignment.attempt

    def log(self, job_id: str, attempt: int, *messages: str) -> int:
        events = [job_pb2.Event(log=job_pb2.LogLine(level="info", message=m)) for m in messages]
        return self.report(job_id, attempt, events)

    def report(self, job_id: str, attempt: int, events: list[job_pb2.Event]) -> int:
        response = self.stub.ReportEvents(
            coordinator_pb2.ReportEventsRequest(
                worker_id=self.worker_id, job_id=job_id, attempt=attempt, events=events
            ),
            timeout=5,
            wait_for_ready=True,  # the channel may be reconnecting after a restart
        )
        return response.last_seq

    def finish(self, job_id: str, attempt: int, state: int = job_pb2.SUCCEEDED, **kw) -> None:
        self.stub.FinishJob(
            coordinator_pb2.FinishJobRequest(
                worker_id=self.worker_id, job_id=job_id, attempt=attempt, state=state, **kw
            ),
            timeout=5,
            wait_for_ready=True,
        )

    def close(self) -> None:
        self.channel.close()

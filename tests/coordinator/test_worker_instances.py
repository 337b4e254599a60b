"""One worker id, two processes: a real coordinator told apart by the nonce each worker
process sends (RegisterWorkerRequest.instance), over real gRPC."""

from __future__ import annotations

import time

import grpc
import pytest
from coordinator_helpers import RPC_TIMEOUT, Client, make_spec, state_changes, wait_for

from tunefleet.status_details import WORKER_ID_IN_USE, read_details
from tunefleet.v1 import coordinator_pb2, job_pb2

HEARTBEAT_S = 0.2  # a silent holder is taken over after 0.2 + 1 s
LEASE_S = 30.0  # far off: these tests are about what happens before a lease ends


class Process:
    """One worker process's calls: its id and its instance nonce."""

    def __init__(self, client: Client, worker_id: str, instance: str):
        self.stub = client.stub
        self.worker_id = worker_id
        self.instance = instance

    def register(self) -> coordinator_pb2.RegisterWorkerResponse:
        request = coordinator_pb2.RegisterWorkerRequest(
            worker_id=self.worker_id,
            hostname="gpu-host-a" if self.instance == "a" else "gpu-host-b",
            resources=coordinator_pb2.WorkerResources(gpus=0, cpus=2),
            instance=self.instance,
        )
        return self.stub.RegisterWorker(request, timeout=RPC_TIMEOUT)

    def heartbeat(self, *running: str, leaving: bool = False):
        request = coordinator_pb2.HeartbeatRequest(
            worker_id=self.worker_id,
            running_job_ids=running,
            instance=self.instance,
            leaving=leaving,
        )
        return self.stub.Heartbeat(request, timeout=RPC_TIMEOUT)

    def acquire(self) -> coordinator_pb2.Assignment:
        request = coordinator_pb2.AcquireJobRequest(worker_id=self.worker_id, wait_seconds=1)
        return self.stub.AcquireJob(request, timeout=RPC_TIMEOUT).assignment


@pytest.fixture
def client(start_coordinator):
    server = start_coordinator(heartbeat_interval_s=HEARTBEAT_S, lease_timeout_s=LEASE_S)
    c = Client(server.address)
    yield c
    c.close()


def _refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _check_in_use(error: grpc.RpcError, worker_id: str, host: str) -> None:
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    message = error.details()
    assert f"worker id {worker_id} is in use by another worker process on {host}" in message
    assert "give each worker its own --id" in message and "\n" not in message
    info = read_details(error).error_info
    assert info is not None and info.reason == WORKER_ID_IN_USE
    assert info.metadata["worker_id"] == worker_id and info.metadata["hostname"] == host


def test_a_second_process_with_a_live_workers_id_is_refused_and_disturbs_nothing(client):
    first, twin = Process(client, "gpu-1", "a"), Process(client, "gpu-1", "b")
    first.register()
    job = client.submit(make_spec("held"))
    assert first.acquire().job.id == job.id

    for call in (twin.register, lambda: twin.heartbeat(job.id)):
        _check_in_use(_refusal(call), "gpu-1", "gpu-host-a")
        first.heartbeat(job.id)  # the holder stays live meanwhile
    twin.heartbeat(leaving=True)  # the twin's sign-off must not sign the holder off

    response = first.heartbeat(job.id)
    assert response.known and not response.lost_job_ids and not response.cancel_job_ids
    held = client.get(job.id)
    assert (held.state, held.attempt, held.worker_id) == (job_pb2.ASSIGNED, 1, "gpu-1")
    assert [s for s, _ in state_changes(client.events(job.id))] == ["QUEUED", "ASSIGNED"]
    assert client.workers()["gpu-1"].hostname == "gpu-host-a"


def test_a_new_process_takes_over_an_id_whose_holder_went_silent(client):
    """kill -9 and an immediate restart: the new process waits one heartbeat interval plus
    a margin, not the whole lease; the old process's job is requeued, and the old process,
    should it wake, is refused."""
    first, restarted = Process(client, "gpu-1", "a"), Process(client, "gpu-1", "b")
    first.register()
    job = client.submit(make_spec("held"))
    assert first.acquire().job.id == job.id
    first.heartbeat(job.id)
    killed = time.monotonic()

    def registers():
        try:
            return restarted.register()
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
            return None

    wait_for(registers, timeout=10, interval=0.1)
    assert time.monotonic() - killed < 5, "a restarted worker waits seconds, not a lease"
    requeued = client.get(job.id)
    assert requeued.state == job_pb2.QUEUED
    assert ("QUEUED", "worker gpu-1 restarted") in state_changes(client.events(job.id))
    _check_in_use(_refusal(lambda: first.heartbeat(job.id)), "gpu-1", "gpu-host-b")
    assert restarted.acquire().job.id == job.id


def test_a_worker_that_signed_off_or_was_lost_is_replaced_at_once(client):
    first = Process(client, "gpu-1", "a")
    first.register()
    first.heartbeat(leaving=True)
    Process(client, "gpu-1", "b").register()  # no wait: the id is free


def test_workers_without_an_instance_are_not_checked(client):
    """Workers older than instances send none: a registration is a restart, as before."""
    old = Process(client, "gpu-1", "")
    old.register()
    job = client.submit(make_spec("held"))
    assert old.acquire().job.id == job.id
    old.register()
    assert client.get(job.id).state == job_pb2.QUEUED
    assert old.heartbeat().known

"""A worker host cut off the network mid-job (issue 15, item 5), as separate hosts without a
shared file system (see cluster_hosts.py): a coordinator, two workers with disks of their
own, and an S3-compatible store (moto). Real processes throughout.

The job trains on w1 and uploads its checkpoints to the store (worker/checkpoint_sync.py);
then w1's link goes down. Its lease runs out on both sides: the coordinator requeues the job
("worker lost") and w2, which never saw w1's disk, resumes from the newest uploaded
checkpoint and finishes it. When w1's link comes back, whatever it still had to say about
the job is refused (the attempt number fences it off), and the job stays SUCCEEDED with
w2's result. The test prints how long the job took to get going again on w2 (pytest -s).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import fsspec
import grpc
import pytest
from cluster_helpers import FAKE_CREDENTIALS, clear_s3_instances
from cluster_hosts import Hosts, namespaces_unavailable
from jobfiles import make_sentiment_csv

from tunefleet.spec import spec_from_dict
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from fault_helpers import (  # noqa: E402
    check_events,
    event_time,
    finished_steps,
    resumed_from,
    state_changes,
    train_steps,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)

PORT, STORE_PORT = 50051, 5000
BUCKET = "fleet"
HEARTBEAT_S, LEASE_S = 0.5, 3.0


@pytest.fixture
def hosts(tmp_path, tiny_bert, monkeypatch):
    why = namespaces_unavailable()
    if why:
        pytest.skip(f"multi-host tests need Linux network and mount namespaces: {why}")
    hosts = Hosts(tmp_path / "hosts", ["coord", "w1", "w2", "store"])
    try:
        store_url = f"http://{hosts.addresses['store']}:{STORE_PORT}"
        hosts.env = {**os.environ, **FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": store_url}
        hosts.env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
        hosts.env.pop("TUNEFLEET_ALLOWED_ROOTS", None)
        for key, value in {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": store_url}.items():
            monkeypatch.setenv(key, value)  # this process reads the store too
        clear_s3_instances()
        hosts.start_store(STORE_PORT, hosts.env)
        fsspec.filesystem("s3").mkdir(BUCKET)
        hosts.start_coordinator(PORT, hosts.env, heartbeat_s=HEARTBEAT_S, lease_s=LEASE_S)
        for worker in ("w1", "w2"):  # the same files on each worker's own disk
            shutil.copytree(tiny_bert, hosts.disk(worker) / "model")
            make_sentiment_csv(hosts.disk(worker) / "train.csv", 512)
            make_sentiment_csv(hosts.disk(worker) / "eval.csv", 64, 1)
        yield hosts
    finally:
        hosts.destroy()
        clear_s3_instances()


def start_worker(hosts: Hosts, name: str) -> None:
    argv = [
        sys.executable, "-m", "tunefleet.worker", "--id", name, "--gpus", "0", "--poll-s", "1",
        "--coordinator", f"{hosts.addresses['coord']}:{PORT}",
        "--artifacts", str(hosts.private / "artifacts"),
        "--artifacts-uri", f"s3://{BUCKET}/artifacts",
        "--address", hosts.addresses[name],
    ]  # fmt: skip
    hosts.start(name, argv, hosts.env, "worker.log")


def job_spec(hosts: Hosts):
    """1,280 steps (20 epochs of 64), a checkpoint every 10; paths as the workers see them.
    Long enough that w1 still trains when its lease runs out: a warm engine process trains
    the tiny BERT at ~50 steps/s from its first second."""
    private = hosts.private
    return spec_from_dict(
        {
            "name": "network-cut",
            "model": {"source": "hf", "name": str(private / "model")},
            "data": {
                "source": "csv",
                "train": str(private / "train.csv"),
                "eval": str(private / "eval.csv"),
                "max_length": 16,
            },
            "optimizer": {"name": "adamw", "lr": 5e-3},
            "train": {
                "epochs": 20,
                "batch_size": 8,
                "precision": "no",
                "log_every_steps": 1,
                "checkpoint_every_steps": 10,
            },  # fmt: skip
            "resources": {"gpus": 0},
        }
    )


def markers(job_id: str) -> list[dict]:
    """The job's complete uploaded checkpoints (their UPLOADED.json)."""
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    found = fs.glob(f"{BUCKET}/artifacts/{job_id}/checkpoints/*/UPLOADED.json")
    return [json.loads(fs.cat_file(path)) for path in found]


def report(line: str) -> None:
    print(f"\n[cluster] {line}", flush=True)


def test_a_worker_cut_off_the_network_is_fenced_and_the_job_resumes_on_the_other_host(hosts):
    channel = grpc.insecure_channel(f"{hosts.addresses['coord']}:{PORT}")
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)

    def job() -> job_pb2.Job:
        return stub.GetJob(coordinator_pb2.GetJobRequest(job_id=job_id), timeout=10)

    def events() -> list[job_pb2.Event]:
        request = coordinator_pb2.StreamEventsRequest(job_id=job_id)
        return list(stub.StreamEvents(request, timeout=10))

    def live(worker: str) -> bool:
        listed = stub.ListWorkers(coordinator_pb2.ListWorkersRequest(), timeout=10).workers
        return any(w.id == worker and w.state == coordinator_pb2.LIVE for w in listed)

    try:
        start_worker(hosts, "w1")
        wait_for(lambda: live("w1"), 60, "w1 to register")
        request = coordinator_pb2.SubmitJobRequest(spec=job_spec(hosts))
        job_id = stub.SubmitJob(request, timeout=10).id
        wait_for(lambda: job().state == job_pb2.RUNNING, 60, "the job to run on w1")
        start_worker(hosts, "w2")  # the spare, with an empty disk of its own
        wait_for(lambda: live("w2"), 60, "w2 to register")
        uploaded = wait_for(lambda: markers(job_id), 120, "w1's first checkpoint upload", 0.3)
        assert {(m["worker"], m["attempt"]) for m in uploaded} == {("w1", 1)}

        # w1 loses its network: the store and the coordinator are out of its reach.
        hosts.set_link("w1", up=False)
        cut = time.time()
        cut_at = max(train_steps(events(), attempt=1), default=0)
        ended = (job_pb2.SUCCEEDED, job_pb2.FAILED, job_pb2.CANCELLED)
        wait_for(lambda: job().state in ended, 200, "the job to end on w2", 0.5)
        done = job()
        assert done.state == job_pb2.SUCCEEDED, done.reason
        assert (done.attempt, done.worker_id) == (2, "w2")
        seen = events()
        requeue = next(
            e for e in seen if e.WhichOneof("kind") == "state_change" and e.attempt == 1
            and e.state_change.state == job_pb2.QUEUED
        )  # fmt: skip
        assert requeue.state_change.reason == "worker lost"
        resumed = resumed_from(seen, 2)
        assert resumed is not None and resumed > 0
        note_event = next(
            e for e in seen if e.attempt == 2 and e.WhichOneof("kind") == "log"
            and "uploaded checkpoint" in e.log.message
        )  # fmt: skip
        note = note_event.log.message
        assert note.startswith(f"resumed from uploaded checkpoint step {resumed} (host ")
        assert ", worker w1, attempt 1): " in note
        ready = next(
            event_time(e) for e in seen if e.attempt == 2 and e.WhichOneof("kind") == "log"
            and e.log.message.startswith("resumed from step-")
        )  # fmt: skip
        first_new = min(
            event_time(e) for e in seen if e.attempt == 2 and e.WhichOneof("kind") == "metrics"
            and event_time(e) > cut
        )  # fmt: skip
        stale_count = sum(1 for e in seen if e.attempt == 1)
        # Steps w1 trained but never reported came with the uploaded checkpoint's events.
        contiguous = check_events(seen)

        # w1 comes back: what it still had to report (events, how its attempt ended) is
        # refused, FAILED_PRECONDITION (the attempt number is the fence); the job stays w2's.
        hosts.set_link("w1", up=True)
        w1_log = hosts.disk("w1") / "worker.log"
        refusal = wait_for(
            lambda: next(
                (
                    line
                    for line in w1_log.read_text(errors="replace").splitlines()
                    if f"{job_id} attempt 1 does not belong to worker w1" in line
                ),
                None,
            ),
            90,
            "a late report of w1's to be refused",
            0.5,
        )
        time.sleep(2 * HEARTBEAT_S + 1)  # what w1 still sends arrives by now
        after = job()
        assert (after.state, after.attempt, after.worker_id) == (job_pb2.SUCCEEDED, 2, "w2")
        assert dict(after.artifacts) == dict(done.artifacts)
        assert sum(1 for e in events() if e.attempt == 1) == stale_count
        assert "lease lost; killing the training process" in w1_log.read_text(errors="replace")
        final = markers(job_id)  # nothing of w1's was published after the cut
        assert final and all(m["worker"] == "w2" for m in final)
        assert fsspec.filesystem("s3").exists(f"{done.artifacts['model_uri']}/config.json")

        changes = state_changes(seen)
        report(
            f"network cut on w1 at step {cut_at} (lease {LEASE_S:g} s, heartbeat "
            f"{HEARTBEAT_S:g} s): requeued {event_time(requeue) - cut:.1f} s after the cut; "
            f"w2 had the uploaded step {resumed} at {event_time(note_event) - cut:.1f} s, "
            f"its engine resumed at "
            f"{ready - cut:.1f} s, first new step at {first_new - cut:.1f} s; "
            f"{finished_steps(seen)}, {contiguous}; w1 back: {refusal.strip()[-200:]!r}; "
            f"states {[c[0] for c in changes]}; w2: {note}"
        )
    finally:
        channel.close()

"""Resume from uploaded checkpoints (issue 15, item 4), on one host: two worker processes
with disks of their own (different --artifacts folders) and an S3-compatible store (moto
server). The job's first worker is killed -9 after a checkpoint upload; the other worker,
which never saw its disk, resumes from the uploaded step and publishes the final model."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import fsspec
import pytest
from jobfiles import make_sentiment_csv, write_text_job

from tunefleet.client.uploads import local_inputs, upload_inputs
from tunefleet.spec import load_job_file
from tunefleet.v1 import job_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from fault_helpers import (  # noqa: E402
    Cluster,
    check_events,
    event_time,
    finished_steps,
    messages,
    report,
    resumed_from,
    train_steps,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)
TERMINAL = (job_pb2.SUCCEEDED, job_pb2.FAILED, job_pb2.CANCELLED)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, heartbeat_s=0.5, lease_s=2.5)
    yield c
    c.destroy()


def uploaded(bucket: str, job_id: str) -> list[dict]:
    """The markers of the job's complete uploaded checkpoints."""
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    pattern = f"{bucket.removeprefix('s3://')}/artifacts/{job_id}/checkpoints/*/UPLOADED.json"
    return [json.loads(fs.cat_file(path)) for path in fs.glob(pattern)]


def test_a_worker_on_another_disk_resumes_from_the_uploaded_checkpoint(
    cluster, bucket, tmp_path, tiny_bert
):
    data = (
        make_sentiment_csv(tmp_path / "train.csv", 512),
        make_sentiment_csv(tmp_path / "eval.csv", 64, 1),
    )
    # 1,280 steps: wa (a warm engine process, ~50 steps/s from its first second) must still
    # be training a second after its first upload is seen.
    train = {"epochs": 20, "batch_size": 8, "precision": "no", "log_every_steps": 1}
    train["checkpoint_every_steps"] = 10
    spec = load_job_file(write_text_job(tmp_path, tiny_bert, data, name="ckpt-up", train=train))

    def worker(name: str):
        disk = ("--artifacts", str(tmp_path / f"{name}-disk"))  # replaces the shared one
        cluster.start_worker(name, extra_args=(*disk, "--artifacts-uri", f"{bucket}/artifacts"))
        cluster.wait_worker_live(name)

    cluster.start_coordinator()
    worker("wa")
    job = cluster.submit(spec)
    cluster.wait_job(job.id, lambda j: j.state == job_pb2.RUNNING, "the job to run on wa")
    worker("wb")  # a spare with an empty disk of its own
    first = wait_for(lambda: uploaded(bucket, job.id), 120, "a checkpoint upload", 0.3)[0]
    assert (first["worker"], first["attempt"]) == ("wa", 1) and first["step"] > 0
    time.sleep(1.0)  # the steps up to it reach the coordinator (relayed every 0.5 s)

    cluster.workers["wa"].kill9()
    killed, killed_at = time.time(), cluster.last_step(job.id, 1)
    done = cluster.wait_job(job.id, lambda j: j.state == job_pb2.SUCCEEDED, "the job to succeed")
    events = cluster.events(job.id)
    assert (done.attempt, done.worker_id) == (2, "wb")
    resumed = resumed_from(events, 2)
    assert resumed is not None and resumed >= first["step"] > 0
    notes = [m for m in messages(events, attempt=2) if "uploaded checkpoint" in m]
    assert notes and notes[0].startswith(
        f"resumed from uploaded checkpoint step {resumed} (host "
    ), notes
    assert ", worker wa, attempt 1): " in notes[0]
    # wb never saw wa's disk: of attempt 1 it has only the events that came with the upload.
    wa_attempt = tmp_path / "wb-disk" / job.id / "attempts" / "1"
    assert [p.name for p in wa_attempt.iterdir()] == ["events.jsonl"]

    # The final model is in the store, and the newest checkpoints beside it (keep 2).
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert done.artifacts["model_uri"] == f"{bucket}/artifacts/{job.id}/model"
    assert fs.exists(f"{done.artifacts['model_uri']}/config.json")
    assert done.artifacts["checkpoints_uri"] == f"{bucket}/artifacts/{job.id}/checkpoints"
    markers = uploaded(bucket, job.id)
    assert len(markers) == 2 and all(m["worker"] == "wb" for m in markers)
    assert max(m["step"] for m in markers) == done.summary["steps"]

    contiguous = check_events(events)
    # wb's engine resumed (its "resumed from step-N" line), and its first step the
    # coordinator had not seen from wa (the steps wa reported are stored once).
    ready = next(
        event_time(e)
        for e in events
        if e.attempt == 2
        and e.WhichOneof("kind") == "log"
        and e.log.message.startswith("resumed from step-")
    )
    new_step = min(
        event_time(e)
        for e in events
        if e.attempt == 2 and e.WhichOneof("kind") == "metrics" and e.metrics.step > killed_at
    )
    report(
        f"kill -9 worker wa at step {killed_at} (an upload of step {first['step']} seen); wb, "
        f"another disk, resumed from uploaded step {resumed}: engine ready "
        f"{ready - killed:.1f} s after the kill, first new step at {new_step - killed:.1f} s "
        f"(lease 2.5 s); "
        f"{len(train_steps(events, attempt=2))} steps on wb, {finished_steps(events)}, "
        f"{contiguous}; {notes[0]}"
    )


def test_a_job_on_uploaded_data_resumes_on_a_worker_with_another_input_cache(
    cluster, bucket, tmp_path, tiny_bert
):
    """The data and model as the SDK uploads them (s3:// URLs): each worker reads its own
    cached copy, at a path of its own (the cache lives under its --artifacts disk). The
    checkpoints' spec identity is the submitted spec's, so the other worker resumes; it
    used to see a "different spec" (the cache paths) and fail the job at once. The
    spec.json in the store named those cache paths too."""
    data = (
        make_sentiment_csv(tmp_path / "train.csv", 256),
        make_sentiment_csv(tmp_path / "eval.csv", 32, 1),
    )
    train = {"epochs": 10, "batch_size": 8, "precision": "no", "log_every_steps": 1}
    train["checkpoint_every_steps"] = 10
    spec = load_job_file(write_text_job(tmp_path, tiny_bert, data, name="url-ckpt", train=train))
    present, _, _ = local_inputs(spec)
    spec, _ = upload_inputs(spec, present, f"{bucket}/inputs")
    assert spec.data.train.startswith("s3://") and spec.model.name.startswith("s3://")

    def worker(name: str):
        disk = ("--artifacts", str(tmp_path / f"{name}-disk"))
        cluster.start_worker(name, extra_args=(*disk, "--artifacts-uri", f"{bucket}/artifacts"))
        cluster.wait_worker_live(name)

    cluster.start_coordinator()
    worker("wa")
    job = cluster.submit(spec)
    cluster.wait_job(job.id, lambda j: j.state == job_pb2.RUNNING, "the job to run on wa")
    worker("wb")
    first = wait_for(lambda: uploaded(bucket, job.id), 120, "a checkpoint upload", 0.3)[0]
    cluster.workers["wa"].kill9()
    done = cluster.wait_job(job.id, lambda j: j.state in TERMINAL, "the job to end")
    assert (done.state, done.attempt, done.worker_id) == (job_pb2.SUCCEEDED, 2, "wb"), done.reason
    resumed = resumed_from(cluster.events(job.id), 2)
    assert resumed is not None and resumed >= first["step"] > 0
    # The stored spec.json is the job's as submitted: its URLs, not wb's cache paths.
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    stored = json.loads(fs.cat_file(done.artifacts["spec_uri"]))
    assert (stored["data"]["train"], stored["model"]["name"]) == (spec.data.train, spec.model.name)

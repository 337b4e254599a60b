"""A store that is down or slow around a job: a real coordinator, a WorkerDaemon with a
scripted engine, and moto reached through a relay (cluster_helpers.relay) that the test
opens late or that delays what the store sends."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import fsspec
import pytest
from cluster_helpers import clear_s3_instances, free_port, relay

from tunefleet.client import Client
from tunefleet.coordinator import start_server
from tunefleet.worker import WorkerDaemon

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("coordinator", "worker"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))
from coordinator_helpers import make_spec, wait_for  # noqa: E402
from worker_helpers import scripted_command  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def test_a_store_down_at_the_final_upload_is_tried_again_and_the_job_succeeds(
    s3_env, bucket, tmp_path, monkeypatch
):
    store_port = int(s3_env.rsplit(":", 1)[1])
    relay_port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{relay_port}")  # closed for now
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    clear_s3_instances()
    server = start_server("127.0.0.1:0", tmp_path / "c.db", check_paths=False)
    daemon = WorkerDaemon(
        server.address,
        artifacts_root=tmp_path / "artifacts",
        gpus=0,
        worker_id="w-up",
        poll_s=0.3,
        command_factory=scripted_command("succeed"),
        artifacts_uri=f"{bucket}/artifacts",
    )
    thread = threading.Thread(target=daemon.run)
    thread.start()
    opened = None
    try:
        with Client(server.address) as client:
            job = client.submit(make_spec("late-store"))

            def warnings() -> list[str]:
                return [
                    e.log.message
                    for e in client.events(job.id, follow=False)
                    if e.log and e.log.level == "warning"
                ]

            ended = lambda: client.get(job.id).state.is_terminal()  # noqa: E731
            wait_for(lambda: warnings() or ended(), timeout=60, interval=0.2)
            first = warnings()
            assert first, f"no retry; the job ended: {client.get(job.id).reason}"
            assert "failed (try 1 of 5)" in first[0] and "trying again in" in first[0], first
            opened = relay(relay_port, store_port)  # the store is back
            wait_for(lambda: client.get(job.id).state.is_terminal(), timeout=60, interval=0.2)
            done = client.get(job.id)
        assert done.state.value == "SUCCEEDED", done.reason
        assert done.attempt == 1
        root = f"{bucket}/artifacts/{job.id}"
        assert done.artifacts["artifacts_uri"] == root
        fs = fsspec.filesystem("s3")
        fs.invalidate_cache()
        assert fs.exists(f"{root}/result.json")
    finally:
        daemon.stop()
        thread.join(timeout=20)
        server.stop(grace=0)
        if opened is not None:
            opened.close()
        clear_s3_instances()


def test_a_job_whose_inputs_download_for_longer_than_a_lease_keeps_its_attempt(
    s3_env, bucket, tmp_path, monkeypatch
):
    """While the worker downloads a job's URLs (a big model or dataset) it holds the job
    and says so in its heartbeats. It used to list nothing until training started, so after
    one lease the coordinator requeued the job ("never started the job") and refused the
    worker's reports: a download longer than the lease never trained on a cold worker."""
    fs = fsspec.filesystem("s3")
    rows = "".join(
        f"row {i} of the training data,{'pos' if i % 2 else 'neg'}\n" for i in range(8000)
    )
    fs.pipe_file(f"{bucket.removeprefix('s3://')}/data/train.csv", ("text,label\n" + rows).encode())
    store_port, relay_port = int(s3_env.rsplit(":", 1)[1]), free_port()
    slow = relay(relay_port, store_port, delay_s=1.0)  # each chunk the store sends: +1 s
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{relay_port}")
    clear_s3_instances()
    server = start_server(
        "127.0.0.1:0", tmp_path / "c.db", check_paths=False, heartbeat_interval_s=0.3,
        lease_timeout_s=1.5,
    )  # fmt: skip
    daemon = WorkerDaemon(
        server.address,
        artifacts_root=tmp_path / "artifacts",
        gpus=0,
        worker_id="w-slow",
        poll_s=0.3,
        command_factory=scripted_command("succeed"),
    )
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        with Client(server.address) as client:
            spec = make_spec("slow-inputs")
            spec.data.train = f"{bucket}/data/train.csv"
            job = client.submit(spec)
            wait_for(lambda: client.get(job.id).state.is_terminal(), timeout=90, interval=0.2)
            done = client.get(job.id)
            messages = [e.log.message for e in client.events(job.id, follow=False) if e.log]
        assert (done.state.value, done.attempt) == ("SUCCEEDED", 1), (done.reason, messages)
        fetched = [m for m in messages if m.startswith("data.train: s3://")]
        assert fetched and "downloaded" in fetched[0], messages
        took = float(fetched[0].rsplit(" in ", 1)[1].split(" s")[0])
        assert took > 1.5 * 2, f"the download ({took} s) must outlast the lease for this test"
    finally:
        daemon.stop()
        thread.join(timeout=20)
        server.stop(grace=0)
        slow.close()
        clear_s3_instances()

"""Shared artifact storage: workers upload succeeded jobs' final artifacts to an fsspec URL
and `ftctl artifacts` lists and downloads them (memory:// in-process, file:// across
processes)."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from coordinator_helpers import Client, make_spec, wait_for
from worker_helpers import scripted_command

from tunefleet.client import cli
from tunefleet.coordinator import start_server
from tunefleet.v1 import job_pb2
from tunefleet.worker import WorkerDaemon
from tunefleet.worker.artifact_store import ArtifactStore, ArtifactStoreError


def test_real_job_artifacts_are_uploaded_and_downloaded(trained_job, tmp_path, capsys):
    job, root = trained_job.job, f"{trained_job.artifacts_uri}/{trained_job.job.id}"
    # The local paths stay (model.source: job chains use them); the URLs come beside them.
    assert job.artifacts["model"] == str(trained_job.out_dir / "model")
    assert job.artifacts["artifacts_uri"] == root
    assert job.artifacts["model_uri"] == f"{root}/model"
    assert job.artifacts["result_uri"] == f"{root}/result.json"
    assert job.artifacts["tensorboard_uri"] == f"{root}/tensorboard"
    # Checkpoints are uploaded while the job trains (a resume elsewhere starts from them);
    # a download of everything leaves them out (see below).
    assert job.artifacts["checkpoints_uri"] == f"{root}/checkpoints"
    messages = [e.log.message for e in trained_job.events if e.log]
    assert f"uploading artifacts to {root}" in messages
    assert f"artifacts uploaded to {root}" in messages

    address = ["--coordinator", trained_job.server.address]
    assert cli.main(["artifacts", job.id, *address]) == 0
    listing = capsys.readouterr().out
    assert f"{root}/model" in listing and str(trained_job.out_dir / "checkpoints") in listing

    dest = tmp_path / "download"
    assert cli.main(["artifacts", job.id, "--download", str(dest), *address]) == 0
    assert f"to {dest}" in capsys.readouterr().out
    local_model = trained_job.out_dir / "model"
    for file in local_model.iterdir():
        assert (dest / "model" / file.name).read_bytes() == file.read_bytes()
    assert (dest / "result.json").read_bytes() == (trained_job.out_dir / "result.json").read_bytes()
    assert any((dest / "tensorboard").iterdir())
    assert not (dest / "checkpoints").exists()

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(dest / "model")
    assert model.config.num_labels == 2

    only = tmp_path / "only-result"
    assert (
        cli.main(["artifacts", job.id, "--download", str(only), "--name", "result", *address]) == 0
    )
    assert [p.name for p in only.iterdir()] == ["result.json"]
    assert cli.main(["artifacts", job.id, "--download", str(only), "--name", "nope", *address]) == 1
    assert "no uploaded artifact named nope" in capsys.readouterr().err


@pytest.fixture
def cluster(tmp_path):
    """A coordinator and a scripted WorkerDaemon uploading to `uri` (set per test)."""
    server = start_server("127.0.0.1:0", tmp_path / "c.db", check_paths=False)
    started = []

    def start(uri: str) -> Client:
        daemon = WorkerDaemon(
            server.address,
            artifacts_root=tmp_path / "artifacts",
            gpus=0,
            worker_id="w-up",
            poll_s=0.3,
            command_factory=scripted_command("succeed"),
            artifacts_uri=uri,
        )
        thread = threading.Thread(target=daemon.run)
        thread.start()
        started.append((daemon, thread))
        return Client(server.address)

    yield server, start
    for daemon, thread in started:
        daemon.stop()
        thread.join(timeout=20)
    server.stop(grace=0)


def test_file_urls_work_across_processes(cluster, tmp_path):
    server, start = cluster
    remote = tmp_path / "shared"
    client = start(remote.as_uri())
    job = client.submit(make_spec("to-file"))
    wait_for(lambda: client.get(job.id).state == job_pb2.SUCCEEDED, timeout=20)
    assert (remote / job.id / "result.json").exists()
    assert client.get(job.id).artifacts["result_uri"] == f"{remote.as_uri()}/{job.id}/result.json"

    dest = tmp_path / "fetched"
    result = subprocess.run(
        [sys.executable, "-m", "tunefleet.client.cli", "artifacts", job.id,
         "--download", str(dest), "--coordinator", server.address],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (dest / "result.json").read_text() == (remote / job.id / "result.json").read_text()
    assert (dest / "attempts" / "1" / "events.jsonl").exists()


def test_a_failed_upload_fails_the_job_and_keeps_the_local_copy(cluster, tmp_path):
    _, start = cluster
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    client = start(f"{blocker.as_uri()}/sub")
    job = client.submit(make_spec("upload-fails"))
    wait_for(lambda: client.get(job.id).state == job_pb2.FAILED, timeout=20)
    reason = client.get(job.id).reason
    assert reason.startswith(
        f"training succeeded but uploading its artifacts to {blocker.as_uri()}"
    )
    assert f"the local copy is in {tmp_path / 'artifacts' / job.id}" in reason
    assert (tmp_path / "artifacts" / job.id / "result.json").exists()


def test_jobs_without_uploads_say_so(cluster, tmp_path, capsys):
    server, _ = cluster
    job = Client(server.address).submit(make_spec("never-ran"))
    assert cli.main(["artifacts", job.id, "--coordinator", server.address]) == 0
    assert "has no artifacts (QUEUED)" in capsys.readouterr().out
    code = cli.main(
        ["artifacts", job.id, "--download", str(tmp_path / "d"), "--coordinator", server.address]
    )
    assert code == 1
    assert "has no uploaded artifacts" in capsys.readouterr().err


def test_unusable_urls_are_refused_at_startup(tmp_path):
    with pytest.raises(ArtifactStoreError, match="nosuchfs"):
        ArtifactStore("nosuchfs://bucket/x")
    result = subprocess.run(
        [sys.executable, "-m", "tunefleet.worker", "--coordinator", "127.0.0.1:1",
         "--artifacts-uri", "nosuchfs://bucket/x"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--artifacts-uri: nosuchfs://bucket/x" in result.stderr

"""`ftctl artifacts JOB --download DIR` into what is already there: a file where the folder
should be is refused by name before anything is fetched, and a file downloaded again is
replaced by a rename, never truncated and rewritten in place. The job is driven by the
scripted worker; its uploaded artifacts are a file:// folder, as a worker's
--artifacts-uri leaves them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from client_helpers import needs_coordinator

from tunefleet.client.cli import main
from tunefleet.v1 import job_pb2

pytestmark = needs_coordinator


@pytest.fixture
def uploaded_job(cluster, scripted_worker, job_dict, tmp_path) -> str:
    """A SUCCEEDED job whose artifacts were uploaded to a file:// folder."""
    with cluster.client() as client:
        job_id = client.submit(job_dict).id
    job_id, attempt = scripted_worker.acquire()
    root = tmp_path / "store" / job_id
    (root / "model").mkdir(parents=True)
    (root / "model" / "config.json").write_text("{}")
    (root / "result.json").write_text('{"new": true}')
    artifacts = {
        "artifacts_uri": root.as_uri(),
        "model_uri": (root / "model").as_uri(),
        "result_uri": (root / "result.json").as_uri(),
    }
    scripted_worker.finish(job_id, attempt, job_pb2.SUCCEEDED, artifacts=artifacts)
    return job_id


def test_a_file_or_no_name_given_as_the_download_folder_is_refused_by_name(
    capsys, cluster, uploaded_job, tmp_path
):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    address = ["--coordinator", cluster.address]
    assert main(["artifacts", uploaded_job, "--download", str(a_file), *address]) == 1
    err = capsys.readouterr().err
    assert f"error: --download {a_file}: is a file, not a folder; give a folder" in err
    assert a_file.read_text() == "keep me"

    assert main(["artifacts", uploaded_job, "--download", "", *address]) == 1
    assert "error: --download: give the folder to download into" in capsys.readouterr().err


def test_downloading_again_replaces_each_file_by_a_rename(capsys, cluster, uploaded_job, tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    old = dest / "result.json"
    old.write_text('{"old": true}')
    kept = tmp_path / "kept.json"  # a second name for the old file's contents
    os.link(old, kept)
    address = ["--coordinator", cluster.address]
    assert main(["artifacts", uploaded_job, "--download", str(dest), *address]) == 0
    out = capsys.readouterr().out
    assert f"downloaded 2 files of job {uploaded_job} to {dest}" in out
    assert old.read_text() == '{"new": true}'
    # Written under another name and renamed over it: the old file itself was not rewritten.
    assert kept.read_text() == '{"old": true}'
    assert sorted(p.name for p in Path(dest).rglob("*")) == ["config.json", "model", "result.json"]


def test_a_store_that_cannot_be_read_is_one_line_naming_the_url(
    capsys, cluster, scripted_worker, job_dict, tmp_path, monkeypatch
):
    """Missing credentials, a wrong endpoint: the store's failure, with the URL, not an
    internal error (`this is a bug in ftctl`), and nothing written into the folder."""
    pytest.importorskip("s3fs")
    import s3fs

    with cluster.client() as client:
        job_id = client.submit(job_dict).id
    job_id, attempt = scripted_worker.acquire()
    root = f"s3://tunefleet-test/artifacts/{job_id}"
    artifacts = {"artifacts_uri": root, "model_uri": f"{root}/model"}
    scripted_worker.finish(job_id, attempt, job_pb2.SUCCEEDED, artifacts=artifacts)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    for key, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x")):
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", down)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    dest = tmp_path / "out"
    address = ["--coordinator", cluster.address]
    for names in ([], ["--name", "model"]):
        assert main(["artifacts", job_id, "--download", str(dest), *names, *address]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: job {job_id}: cannot read {root}"), err
        assert "EndpointConnectionError" in err and "internal error" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    s3fs.S3FileSystem.clear_instance_cache()
    assert not dest.exists() or not any(dest.rglob("*"))

"""Who checks what, and inputs by URL (issue 15), without a training process: the
coordinator's schema-only check, the client's notes and uploads, the worker's input cache
against a real S3-compatible store (moto server)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import fsspec
import pytest
from cluster_helpers import clear_s3_instances, free_port

import tunefleet.client as tc
from tunefleet.client import Client
from tunefleet.client.cli import main
from tunefleet.client.uploads import UploadError, local_inputs, upload_inputs
from tunefleet.coordinator.server import start_server
from tunefleet.spec import load_job_file, spec_from_dict, validate
from tunefleet.spec import sweep as sweep_space
from tunefleet.worker.input_cache import InputCache
from tunefleet.worker.job_inputs import prepare_inputs
from tunefleet.worker.path_policy import PathPolicy


def _job(train: str, eval_: str = "", model: str = "bert-base-uncased") -> dict:
    data = {"source": "csv", "train": train, **({"eval": eval_} if eval_ else {})}
    return {"name": "inputs", "model": {"source": "hf", "name": model}, "data": data}


@pytest.fixture
def coordinator(tmp_path, request):
    storage = getattr(request, "param", "")
    with start_server("127.0.0.1:0", tmp_path / "c.db", storage_uri=storage) as server:
        yield server


def test_the_coordinator_checks_the_schema_only_and_the_client_notes_what_it_cannot_see(
    coordinator,
):
    with Client(coordinator.address) as client:
        handle = client.submit(_job("/only/on/the/workers/train.csv"))
        stored = client.get(handle.id)
        assert stored.state.value == "QUEUED"
        assert handle.notes == [
            "data.train: /only/on/the/workers/train.csv is not on this machine; sent as the "
            "workers' path (each worker checks it before it trains)"
        ]
        with pytest.raises(tc.ValidationError) as info:  # still a schema problem anywhere
            client.submit({**_job("/x.csv"), "data": {"source": "csv", "train": "ftp://h/x"}})
    assert [e.path for e in info.value.errors] == ["data.train"]
    assert "ftp:// is not supported" in info.value.errors[0].message


def test_url_fields_are_schema_checked_and_credentials_refused():
    bad = _job("s3://bucket/x.csv?X-Amz-Signature=abc", "s3://", model="https://u:p@h/m")
    problems = {e.path: e.message for e in validate(spec_from_dict(bad), check_paths=False)}
    assert "credentials in the spec" in problems["data.train"]
    assert "needs a bucket" in problems["data.eval"]
    assert "credentials do not belong in a spec" in problems["model.name"]
    out = validate(spec_from_dict({**_job("s3://b/t.csv"), "output": {"dir": "s3://b/out"}}))
    assert [(e.path, "--artifacts-uri" in e.message) for e in out] == [("output.dir", True)]
    assert validate(spec_from_dict(_job("s3://b/t.csv", "gs://b/e.csv"))) == []


def test_a_folder_given_for_a_file_is_an_error_on_the_client(tmp_path):
    present, notes, problems = local_inputs(spec_from_dict(_job(str(tmp_path))))
    assert [str(p) for p in problems] == [f"data.train: {tmp_path} is a folder; give a file"]


def test_upload_needs_storage_and_says_which_flag(coordinator, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,pos\n")
    with Client(coordinator.address) as client, pytest.raises(UploadError) as info:
        client.submit(_job(str(train)), upload=True)
    assert "--storage-uri" in str(info.value) and "--no-upload" in str(info.value)


def test_local_files_are_uploaded_once_by_content(s3_env, bucket, tmp_path, tiny_bert):
    train, eval_ = tmp_path / "train.csv", tmp_path / "eval.csv"
    train.write_text("text,label\ngood,pos\nbad,neg\n")
    eval_.write_text("text,label\nfine,pos\n")
    storage = f"{bucket}/inputs"
    server = start_server("127.0.0.1:0", tmp_path / "c.db", storage_uri=storage)
    with server, Client(server.address) as client:
        assert client.storage_uri() == storage
        first = client.submit(_job(str(train), str(eval_), model=str(tiny_bert)))
        again = client.submit(_job(str(train), str(eval_), model=str(tiny_bert)))
        spec = client.get(first.id).spec
    model_files = sum(1 for p in tiny_bert.rglob("*") if p.is_file())
    assert first.notes[-1].startswith(f"uploaded {model_files + 2} files")
    assert again.notes[-1].startswith(f"uploaded 0 files (0 bytes) to {storage}")
    assert spec.data.train.startswith(f"{storage}/sha256/") and spec.data.train.endswith(
        "/train.csv"
    )
    assert spec.model.name.startswith(f"{storage}/sha256/")
    fs = fsspec.filesystem("s3")
    assert fs.cat_file(spec.data.train.removeprefix("s3://")) == train.read_bytes()


def test_an_upload_reports_its_progress_and_ftctl_draws_a_bar(s3_env, bucket, tmp_path, tiny_bert):
    train = tmp_path / "train.csv"
    with train.open("w") as f:  # ~6 MB: several chunks of s3fs's multipart upload
        f.write("text,label\n")
        for i in range(120_000):
            f.write(f"row number {i} of a large file,{'pos' if i % 2 else 'neg'}\n")
    size = train.stat().st_size
    storage = f"{bucket}/inputs"
    seen: list[tc.UploadProgress] = []
    server = start_server("127.0.0.1:0", tmp_path / "c.db", storage_uri=storage)
    with server, Client(server.address) as client:
        first = client.submit(_job(str(train), model=str(tiny_bert)), upload_progress=seen.append)
        model_bytes = sum(p.stat().st_size for p in tiny_bert.rglob("*") if p.is_file())
        assert seen and seen[-1].done == seen[-1].total == size + model_bytes
        assert all(a.done <= b.done for a, b in zip(seen, seen[1:], strict=False))
        assert any(p.file == str(train) and 0 < p.done < p.total for p in seen)
        again: list[tc.UploadProgress] = []
        client.submit(_job(str(train), model=str(tiny_bert)), upload_progress=again.append)
        assert again == []  # nothing travels, nothing to draw
        assert first.notes[-1].startswith("uploaded ")

        # On a terminal, ftctl draws the bar while the upload runs (a new file: new bytes).
        train.write_text(train.read_text() + "one more row,pos\n")
        job = tmp_path / "job.yaml"
        job.write_text(json.dumps(_job(str(train), model=str(tiny_bert))))
        main, child = pty.openpty()
        env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
        ftctl = Path(sys.executable).parent / "ftctl"
        proc = subprocess.Popen(
            [str(ftctl), "submit", str(job), "--coordinator", server.address],
            stdin=child, stdout=child, stderr=child, env=env, close_fds=True,
        )  # fmt: skip
        os.close(child)
        chunks = []
        try:
            while True:
                try:
                    data = os.read(main, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
        finally:
            os.close(main)
        assert proc.wait(timeout=60) == 0
    text = b"".join(chunks).decode("utf-8", "replace")
    assert "uploading train.csv" in text and "MB" in text, text
    assert "note: uploaded 1 files" in text, text


def test_an_unreachable_store_is_retried_with_backoff_then_named(tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    clear_s3_instances()
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,pos\n")
    spec = spec_from_dict(_job(str(train)))
    present, _, _ = local_inputs(spec)
    started = time.monotonic()
    with pytest.raises(UploadError) as info:
        upload_inputs(spec, present, "s3://down/inputs", tries=3, backoff_s=0.3)
    took = time.monotonic() - started
    clear_s3_instances()
    message = str(info.value)
    assert message.startswith(f"data.train: cannot upload {train} to s3://down/inputs: ")
    assert "tried 3 times" in message and "is the storage reachable?" in message
    assert took >= 0.3 + 0.6  # two waits, doubling


def test_a_storage_bucket_that_does_not_exist_is_named_once_without_retries(
    s3_env, tmp_path, capsys
):
    """The store's definite answer (no such bucket) is the submit's one-line error naming
    the field, the file and the storage, not an internal error; nothing is queued."""
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,pos\nb,neg\n")
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(_job(str(train))))
    storage = "s3://no-such-bucket-here/inputs"
    with start_server("127.0.0.1:0", tmp_path / "c.db", storage_uri=storage) as server:
        code = main(["--coordinator", server.address, "submit", str(job)])
        err = capsys.readouterr().err
        with Client(server.address) as client:
            assert client.list() == []
    assert code == 1, err
    assert err.startswith(f"error: data.train: cannot upload {train} to {storage}: "), err
    assert "bucket does not exist" in err and "internal error" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_worker_refuses_an_artifacts_bucket_it_cannot_use_before_it_takes_a_job(
    s3_env, bucket, tmp_path
):
    """A missing bucket (or an unreachable store) used to surface only after the first
    job's training succeeded and its upload failed; the worker now says so as it starts."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def worker(uri: str, **extra) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "tunefleet.worker", "--coordinator", "127.0.0.1:1"]
        argv += ["--artifacts", str(tmp_path / "disk"), "--artifacts-uri", uri]
        return subprocess.run(
            argv, env={**env, **extra}, capture_output=True, text=True, timeout=60
        )

    missing = worker("s3://no-such-bucket-here/artifacts")
    assert missing.returncode != 0
    last = missing.stderr.strip().splitlines()[-1]
    assert last.endswith(
        "error: --artifacts-uri: s3://no-such-bucket-here/artifacts: the bucket "
        "no-such-bucket-here does not exist; create it, or fix the URL"
    ), missing.stderr
    down = f"http://127.0.0.1:{free_port()}"
    unreachable = worker(f"{bucket}/artifacts", AWS_ENDPOINT_URL=down, AWS_MAX_ATTEMPTS="1")
    last = unreachable.stderr.strip().splitlines()[-1]
    assert f"error: --artifacts-uri: {bucket}/artifacts: cannot reach the store: " in last
    assert "Traceback" not in missing.stderr + unreachable.stderr


def _put(bucket: str, key: str, data: bytes) -> str:
    fsspec.filesystem("s3").pipe_file(f"{bucket.removeprefix('s3://')}/{key}", data)
    return f"{bucket}/{key}"


def test_the_cache_downloads_once_even_for_two_fetchers_at_once(s3_env, bucket, tmp_path):
    url = _put(bucket, "data/train.csv", b"x" * 200_000)
    cache = InputCache(tmp_path / "cache", 10**9)
    results = []

    def fetch():
        results.append(InputCache(tmp_path / "cache", 10**9).fetch(url))

    threads = [threading.Thread(target=fetch, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a fetcher is still waiting after 30 s"
    assert sorted(r.downloaded for r in results) == [0, 200_000]
    assert results[0].path == results[1].path and results[0].path.name == "train.csv"
    with cache.fetch(url) as again:
        assert again.downloaded == 0 and again.path.read_bytes() == b"x" * 200_000
    for r in results:
        r.close()


def test_what_a_fetcher_killed_mid_download_left_is_removed_not_kept_for_good(
    s3_env, bucket, tmp_path
):
    """A fetcher killed with -9 mid-download leaves its staging folder in tmp/ (a partial
    copy: 59 MB of a 60 MB object, seen by hand). Neither the size bound nor eviction
    counted it, so every such kill leaked disk for good. The next download of that key
    removes it; a later eviction pass removes the others, except one whose download is
    in progress in another process (a worker sharing the folder)."""
    url = _put(bucket, "data/train.csv", b"z" * 50_000)
    other = _put(bucket, "data/other.csv", b"o" * 10)
    cache = InputCache(tmp_path / "cache", 10**9)
    with cache.fetch(url) as first:
        key = first.path.parent.name
    shutil.rmtree(cache.objects / key)  # as if the first download had never finished

    def leftover(prefix: str) -> Path:
        staging = Path(tempfile.mkdtemp(prefix=f"{prefix}.", dir=cache.tmp))
        (staging / "train.csv").write_bytes(b"z" * 20_000)  # the bytes it got
        return staging

    killed, gone, busy = leftover(key), leftover("f" * 32), leftover("e" * 32)
    evicted = leftover("evict").rename(cache.tmp / f"evict.{'d' * 32}.1")
    # Another process is downloading key e...: it holds that key's download lock.
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(cache.locks / f"{'e' * 32}.download")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with cache.fetch(url) as again:
            assert again.downloaded == 50_000 and again.path.read_bytes() == b"z" * 50_000
            assert not killed.exists()
        with cache.fetch(other) as fetched:  # a download, then an eviction pass
            assert fetched.downloaded == 10
        assert not gone.exists() and not evicted.exists()
        assert busy.exists()
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in cache.tmp.iterdir()) == [busy.name]


_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_a_download_does_not_wait_for_a_job_that_uses_the_entry(s3_env, bucket, tmp_path):
    """Two fetchers that both found the entry missing: the first downloads and starts
    using it (its lock shared); the second must then find the entry, not wait for that job
    to end (which, on a real worker, may take hours)."""
    url = _put(bucket, "data/train.csv", b"y" * 1000)
    with InputCache(tmp_path / "elsewhere", 10**9).fetch(url) as probe:
        key = probe.path.parent.name  # the key depends on the object, not on the folder
    cache = InputCache(tmp_path / "cache", 10**9)
    cache.fetch(url).close()
    shutil.rmtree(cache.objects / key)  # as if the second fetcher looked before the rename
    in_use = os.open(cache.locks / f"{key}.lock", os.O_RDWR)
    fcntl.flock(in_use, fcntl.LOCK_SH)  # a job holds the entry
    results = []
    fetcher = threading.Thread(target=lambda: results.append(cache.fetch(url)), daemon=True)
    fetcher.start()
    fetcher.join(20)
    try:
        assert results, "the fetch waited for the job using the entry"
        assert results[0].downloaded == 1000 and results[0].path.read_bytes() == b"y" * 1000
        results[0].close()
    finally:
        os.close(in_use)
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # no temp file left behind


def test_a_replaced_object_is_fetched_again(s3_env, bucket, tmp_path):
    cache = InputCache(tmp_path / "cache", 10**9)
    url = _put(bucket, "d.csv", b"old")
    with cache.fetch(url) as first:
        assert first.path.read_bytes() == b"old"
    _put(bucket, "d.csv", b"new!")
    with cache.fetch(url) as second:
        assert second.downloaded == 4 and second.path.read_bytes() == b"new!"


def test_least_recently_used_entries_go_but_not_those_in_use(s3_env, bucket, tmp_path):
    cache = InputCache(tmp_path / "cache", 250_000)
    a, b, c = (_put(bucket, f"{n}.bin", n.encode() * 100_000) for n in "abc")
    held = cache.fetch(a)  # in use by a job: kept past the bound
    cache.fetch(b).close()
    time.sleep(0.05)
    with cache.fetch(c) as third:
        assert third.downloaded == 100_000
    assert held.path.exists()
    assert cache.size() <= 250_000
    assert cache.fetch(b).downloaded == 100_000  # b was the one evicted
    held.close()


def test_a_missing_object_fails_at_once_and_a_dead_store_is_retryable(
    s3_env, bucket, tmp_path, monkeypatch
):
    policy = PathPolicy()
    cache = InputCache(tmp_path / "cache", 10**9)
    spec = spec_from_dict(_job(f"{bucket}/nope.csv", f"{bucket}/gone.csv"))
    inputs, refused = prepare_inputs(spec, cache, policy, "w-a")
    assert inputs is None
    assert refused == (
        f"data.train: no such object: {bucket}/nope.csv; "
        f"data.eval: no such object: {bucket}/gone.csv",
        False,
    )

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    clear_s3_instances()
    _, refused = prepare_inputs(spec, cache, policy, "w-a")
    assert refused[0].startswith(f"data.train: cannot read {bucket}/nope.csv") and refused[1]
    assert f"; data.eval: cannot read {bucket}/gone.csv" in refused[0]


def test_a_chained_job_gets_the_source_model_by_its_uploaded_url(coordinator):
    """Placement hands a `model.source: job` chain the source's `model_uri` when its worker
    uploaded it (--artifacts-uri), so any worker can fetch it; else the local path."""
    import grpc

    from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2

    stub = coordinator_pb2_grpc.CoordinatorStub(grpc.insecure_channel(coordinator.address))
    stub.RegisterWorker(coordinator_pb2.RegisterWorkerRequest(worker_id="w1", hostname="h"))

    def run(spec: dict, artifacts: dict[str, str]) -> job_pb2.Job:
        job = stub.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec_from_dict(spec)))
        got = stub.AcquireJob(coordinator_pb2.AcquireJobRequest(worker_id="w1", wait_seconds=5))
        assert got.assignment.job.id == job.id
        stub.FinishJob(
            coordinator_pb2.FinishJobRequest(
                worker_id="w1",
                job_id=job.id,
                attempt=got.assignment.attempt,
                state=job_pb2.SUCCEEDED,
                artifacts=artifacts,
            )
        )
        return got.assignment.job

    uploaded = {"model": "/w1/disk/model", "model_uri": "s3://b/artifacts/job-1/model"}
    source = run(_job("s3://b/train.csv"), uploaded)
    chained = {**_job("s3://b/train.csv"), "model": {"source": "job", "job": source.id}}
    assert run(chained, {"model": "/w1/disk/m2"}).spec.model.name == uploaded["model_uri"]
    local_only = run(_job("s3://b/train.csv"), {"model": "/w1/disk/m3"})
    chained = {**_job("s3://b/train.csv"), "model": {"source": "job", "job": local_only.id}}
    assert run(chained, {}).spec.model.name == "/w1/disk/m3"


def _sweep_files(folder: Path) -> tuple[Path, Path, Path]:
    """Two CSVs and a sweep file whose space names them (relative: they resolve against
    the file's folder); the lr is swept only with b.csv."""
    a, b = folder / "a.csv", folder / "b.csv"
    a.write_text("text,label\ngood,pos\nbad,neg\n")
    b.write_text("text,label\nfine,pos\nawful,neg\nnice,pos\n")
    sweep = folder / "sweep.yaml"
    space = {
        "data.train": ["a.csv", "./b.csv"],
        "optimizer.lr": {"values": [0.001, 0.01], "when": {"data.train": "b.csv"}},
    }
    sweep.write_text(json.dumps({**_job("a.csv"), "sweep": {"space": space, "max_concurrent": 3}}))
    return a, b, sweep


def test_a_sweeps_swept_local_files_are_uploaded_and_its_trials_name_their_urls(
    s3_env, bucket, tmp_path
):
    # Only the base job's fields were uploaded: the space kept /home/.../b.csv, which a
    # worker on another host does not have, so those trials failed there.
    a, b, sweep = _sweep_files(tmp_path)
    storage = f"{bucket}/inputs"
    server = start_server("127.0.0.1:0", tmp_path / "c.db", storage_uri=storage)
    with server, Client(server.address) as client:
        first = client.submit_sweep(sweep)
        again = client.submit_sweep(sweep)
        stored = client.get_sweep(first.id)
        trial_train = {client.get(t.job_id).spec.data.train for t in stored.trials}
        # ftctl sweep submit --no-upload sends the paths as the workers' paths, as submit does.
        assert (
            main(["sweep", "submit", str(sweep), "--no-upload", "--coordinator", server.address])
            == 0
        )
        kept = client.list_sweeps()[0].spec.sweep.space["data.train"].values
    assert list(kept) == [str(a), str(b)]
    assert first.notes[-1].startswith(f"uploaded 2 files ({a.stat().st_size + b.stat().st_size:,}")
    assert again.notes[-1].startswith(f"uploaded 0 files (0 bytes) to {storage}, 2 already")
    space = stored.spec.sweep.space
    url_a, url_b = space["data.train"].values
    fs = fsspec.filesystem("s3")
    for url, local in ((url_a, a), (url_b, b)):
        assert url.startswith(f"{storage}/sha256/") and url.endswith(f"/{local.name}")
        assert fs.cat_file(url.removeprefix("s3://")) == local.read_bytes()
    assert space["optimizer.lr"].when["data.train"] == url_b
    assert stored.spec.data.train == url_a  # the base job's, as before
    assert stored.grid_size == 3 and trial_train == {url_a, url_b}


def test_a_condition_on_a_swept_path_holds_for_its_uploaded_url(tmp_path):
    _, _, sweep = _sweep_files(tmp_path)
    spec = load_job_file(sweep)
    present, notes, _ = local_inputs(spec)
    assert sorted(f.path for f in present) == ["data.train", *["sweep.space.data.train"] * 2]
    store = f"memory://{tmp_path.name}"  # fsspec's in-memory store, fresh for this test
    out, done = upload_inputs(spec, present, store)
    assert done.uploaded_files == 2  # a.csv is the base's and a choice: sent once
    url_a, url_b = out.sweep.space["data.train"].values
    assert url_b.startswith(f"{store}/sha256/") and url_b.endswith("/b.csv")
    points = sweep_space.grid(out.sweep)
    assert [(p["data.train"], p.get("optimizer.lr")) for p in points] == [
        (url_a, None),
        (url_b, 0.001),
        (url_b, 0.01),
    ]
    assert list(spec.sweep.space["data.train"].values) == [
        str(tmp_path / "a.csv"),
        str(tmp_path / "b.csv"),
    ]  # the input is not changed
    # A choice this machine does not have is the workers' path, with a note.
    spec.sweep.space["data.train"].values.append("/only/on/the/workers/c.csv")
    present, notes, _ = local_inputs(spec)
    assert len(present) == 3 and notes == [
        "sweep.space.data.train: /only/on/the/workers/c.csv is not on this machine; sent as "
        "the workers' path (each worker checks it before it trains)"
    ]


def test_swept_model_folders_are_uploaded_as_folders(tmp_path):
    models = []
    for name in ("small", "large"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"size": name}))
        models.append(str(tmp_path / name))
    spec = spec_from_dict(
        {**_job("s3://b/train.csv"), "sweep": {"space": {"model.name": [*models, "org/hub"]}}}
    )
    present, _, _ = local_inputs(spec)  # a hub id is no path: it stays as it is
    assert [(f.path, f.value, f.folder) for f in present] == [
        ("sweep.space.model.name", m, True) for m in models
    ]
    store = f"memory://{tmp_path.name}"
    out, done = upload_inputs(spec, present, store)
    *urls, hub = out.sweep.space["model.name"].values
    assert done.uploaded_files == 2 and hub == "org/hub"
    fs = fsspec.filesystem("memory")
    for url, name in zip(urls, ("small", "large"), strict=True):
        assert url.endswith(f"/{name}") and fs.exists(f"{url.rsplit('/', 1)[0]}/.complete")
        assert json.loads(fs.cat_file(f"{url}/config.json")) == {"size": name}


def test_a_file_url_storage_gets_its_folders(tmp_path, tiny_bert):
    """`--storage-uri file:///mnt/share/inputs`: every upload failed
    with "no such file: .../sha256/DIGEST/train.csv", the folders it writes into being
    created by nobody."""
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,pos\nbad,neg\n")
    for storage in (f"file://{tmp_path}/share/inputs", f"file://{tmp_path}/other/inputs"):
        server = start_server("127.0.0.1:0", tmp_path / "c.db", storage_uri=storage)
        with server, Client(server.address) as client:
            handle = client.submit(_job(str(train), model=str(tiny_bert)))
            spec = client.get(handle.id).spec
        assert spec.data.train.startswith(f"{storage}/sha256/"), spec.data.train
        assert spec.model.name.startswith(f"{storage}/sha256/"), spec.model.name
        with fsspec.open(spec.data.train, "rt") as f:
            assert f.read() == train.read_text()
        model = Path(spec.model.name.removeprefix("file://"))
        assert (model / "config.json").read_bytes() == (tiny_bert / "config.json").read_bytes()

"""A cluster without a shared file system (issue 15), as separate hosts: a coordinator, two
workers, a laptop and an object store (moto, S3-compatible), each in its own network
namespace with its own disk (see cluster_hosts.py). Real processes throughout: the coordinator,
the worker daemons, the engine training a tiny BERT, `ftctl` on the laptop.

One cluster for the module, the scenarios in order (each builds on the last):
  1. the laptop submits a CSV job whose files (data and model) exist only on the laptop:
     uploaded, trained on worker 1, the model downloaded back on the laptop; the same job
     again uploads nothing and its worker downloads 0 bytes (warm cache);
  2. a job whose data sits only on worker 2's disk succeeds there (worker 1 is gone); the
     coordinator never has the file;
  3. a job chained on scenario 1's (trained on worker 1) trains on worker 2 from the
     uploaded model;
  4. with the object store down, a submit that must upload retries with backoff and
     fails with a clear message.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import pytest
import yaml
from cluster_helpers import FAKE_CREDENTIALS
from cluster_hosts import Hosts, namespaces_unavailable
from jobfiles import make_sentiment_csv

from tunefleet.client import Client

pytestmark = pytest.mark.timeout(300)

PORT, STORE_PORT = 50051, 5000
BUCKET = "fleet"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_bert):
    why = namespaces_unavailable()
    if why:
        pytest.skip(f"multi-host tests need Linux network and mount namespaces: {why}")
    base = tmp_path_factory.mktemp("hosts")
    hosts = Hosts(base, ["coord", "w1", "w2", "laptop", "store"])
    try:
        hosts.store_url = f"http://{hosts.addresses['store']}:{STORE_PORT}"
        hosts.env = {
            **os.environ,
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": hosts.store_url,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TUNEFLEET_COORDINATOR": f"{hosts.addresses['coord']}:{PORT}",
        }
        hosts.env.pop("TUNEFLEET_ALLOWED_ROOTS", None)
        hosts.store = hosts.start_store(STORE_PORT, hosts.env)
        mkbucket = f"import fsspec; fsspec.filesystem('s3').mkdir({BUCKET!r})"
        made = hosts.run("laptop", [sys.executable, "-c", mkbucket], hosts.env)
        assert made.returncode == 0, made.stderr
        hosts.start_coordinator(
            PORT, hosts.env, heartbeat_s=0.5, lease_s=5, storage_uri=f"s3://{BUCKET}/inputs"
        )
        # The laptop's own files: the model and the data exist nowhere else.
        shutil.copytree(tiny_bert, hosts.disk("laptop") / "model")
        make_sentiment_csv(hosts.disk("laptop") / "train.csv", 96)
        make_sentiment_csv(hosts.disk("laptop") / "eval.csv", 32, 1)
        yield hosts
    finally:
        hosts.destroy()


def start_worker(hosts: Hosts, name: str):
    argv = [
        sys.executable, "-m", "tunefleet.worker", "--id", name, "--gpus", "0", "--poll-s", "1",
        "--artifacts", str(hosts.private / "artifacts"),
        "--artifacts-uri", f"s3://{BUCKET}/artifacts",
        "--input-cache-dir", str(hosts.private / "cache"), "--input-cache-max-gb", "1",
        "--address", hosts.addresses[name],
    ]  # fmt: skip
    return hosts.start(name, argv, hosts.env, "worker.log")


def job_yaml(hosts: Hosts, host: str, name: str, **sections) -> str:
    """Writes a job YAML on `host`'s disk; returns its path as that host sees it."""
    job = {
        "name": name,
        "model": {"source": "hf", "name": "./model"},
        "data": {"source": "csv", "train": "train.csv", "eval": "eval.csv", "max_length": 16},
        "optimizer": {"name": "adamw", "lr": 5e-3},
        "train": {"epochs": 1, "batch_size": 16, "precision": "no", "log_every_steps": 2},
        "resources": {"gpus": 0},
        **sections,
    }
    (hosts.disk(host) / f"{name}.yaml").write_text(yaml.safe_dump(job))
    return str(hosts.private / f"{name}.yaml")


def ftctl(hosts: Hosts, host: str, *args: str, timeout: float = 120, env=None):
    argv = [sys.executable, "-m", "tunefleet.client.cli", *args]
    return hosts.run(host, argv, {**hosts.env, **(env or {})}, timeout)


def wait_done(client: Client, job_id: str, timeout: float = 150):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if job.state.value in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} still {job.state.value} after {timeout} s")


def fetch_notes(client: Client, job_id: str) -> list[str]:
    """The worker's lines about the URLs it fetched for the job."""
    return [
        e.log.message
        for e in client.events(job_id, follow=False)
        if e.log is not None and " on worker " in e.log.message and "://" in e.log.message
    ]


def report(line: str) -> None:
    """The figures each scenario prints (run pytest with -s to see them)."""
    print(f"\n[cluster] {line}", flush=True)


def submit(hosts: Hosts, host: str, path: str, *flags: str) -> tuple[str, str]:
    done = ftctl(hosts, host, "submit", path, "-q", *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip(), done.stderr


def test_across_hosts_without_a_shared_file_system(cluster):
    hosts = cluster
    w1 = start_worker(hosts, "w1")
    with Client(f"{hosts.addresses['coord']}:{PORT}") as client:
        # 1. Laptop-only files: uploaded, trained on w1, the model back on the laptop.
        path = job_yaml(hosts, "laptop", "from-laptop")
        started = time.monotonic()
        job_id, notes = submit(hosts, "laptop", path)
        job = wait_done(client, job_id)
        cold_s = time.monotonic() - started
        assert job.state.value == "SUCCEEDED", job.reason
        assert job.worker_id == "w1"
        assert f"to s3://{BUCKET}/inputs" in notes and "uploaded 0 files" not in notes
        assert job.spec.data.train.startswith(f"s3://{BUCKET}/inputs/sha256/")
        assert job.spec.model.name.startswith(f"s3://{BUCKET}/inputs/sha256/")
        cold = fetch_notes(client, job_id)
        assert any("data.train" in n and "downloaded" in n and "0 bytes" not in n for n in cold)
        got = ftctl(hosts, "laptop", "artifacts", job_id, "--download", "downloaded")
        assert got.returncode == 0, got.stdout + got.stderr
        assert (hosts.disk("laptop") / "downloaded" / "model" / "config.json").exists()

        # The same job again: nothing uploaded, nothing downloaded (the worker's cache).
        started = time.monotonic()
        again_id, again_notes = submit(hosts, "laptop", path)
        again = wait_done(client, again_id)
        warm_s = time.monotonic() - started
        assert again.state.value == "SUCCEEDED", again.reason
        assert "uploaded 0 files (0 bytes)" in again_notes
        warm = fetch_notes(client, again_id)
        assert warm and all("cached, 0 bytes downloaded" in n for n in warm), warm
        report(
            f"laptop-only CSV job: cold {cold_s:.1f} s ({'; '.join(cold)}), "
            f"warm {warm_s:.1f} s (0 bytes uploaded, 0 bytes downloaded)"
        )

        # 2. Data only on w2's disk; w1 leaves so that w2 takes the job.
        hosts.stop(w1)
        w2_data = hosts.disk("w2") / "local-data"
        make_sentiment_csv(w2_data / "train.csv", 64)
        worker_path = str(hosts.private / "local-data" / "train.csv")
        on_w2 = {
            "model": {"source": "hf", "name": job.spec.model.name},  # the uploaded model
            "data": {"source": "csv", "train": worker_path, "max_length": 16},
        }
        path = job_yaml(hosts, "laptop", "worker-data", **on_w2)
        start_worker(hosts, "w2")
        local_id, notes = submit(hosts, "laptop", path)
        assert "is not on this machine; sent as the workers' path" in notes
        local = wait_done(client, local_id)
        assert local.state.value == "SUCCEEDED", local.reason
        assert local.worker_id == "w2" and local.spec.data.train == worker_path
        assert not (hosts.disk("coord") / "local-data").exists()

        # 3. Chained on the job w1 trained: w2 loads its model from storage.
        path = job_yaml(hosts, "laptop", "chained", model={"source": "job", "job": job_id})
        chained_id, _ = submit(hosts, "laptop", path)
        chained = wait_done(client, chained_id)
        assert chained.state.value == "SUCCEEDED", chained.reason
        assert chained.worker_id == "w2"
        assert any("model.name: s3://" in n for n in fetch_notes(client, chained_id))

    # 4. The object store goes down: a submit that must upload retries, then says why.
    hosts.stop(hosts.store)
    make_sentiment_csv(hosts.disk("laptop") / "train.csv", 97)  # new bytes: must upload
    path = job_yaml(hosts, "laptop", "store-down")
    started = time.monotonic()
    down = ftctl(hosts, "laptop", "submit", path, env={"AWS_MAX_ATTEMPTS": "1"})
    took = time.monotonic() - started
    assert down.returncode != 0
    message = down.stdout + down.stderr
    assert "cannot upload" in message and "tried 5 times" in message, message
    assert "Traceback" not in message
    report(f"object store down during upload: failed after {took:.1f} s: {message.strip()}")

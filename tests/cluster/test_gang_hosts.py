"""A 2-node gang job across two hosts that share no file system (issue 15, item 5): a
coordinator, two workers, a laptop and an object store (moto), each in its own network
namespace with its own disk (cluster_hosts.py). Each worker's `--address` is its own bridge
IP; the job (the tiny BERT, 1 gloo process per node) rendezvouses at machine rank 0's, and
the ranks talk over the bridge, not loopback.

Nothing is shared but the network and the store: the laptop's model and data are uploaded,
each member trains in a folder on its own disk, and rank 0 (the one holding the result)
uploads the final model, which the laptop then downloads.

What this scenario found in the product (both fixed): gloo listened on the address the
host's name resolves to (loopback here), so the ranks could not connect across hosts
(now the interface of --address: worker/host_info.py); and every rank wrote its RNG
state into the checkpoint folder, which is not on rank 1's disk (now gathered to the
main process, the only one that touches the job's folder: worker/engine/rank_sync.py).
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

from tunefleet.client import Client, JobState

pytestmark = pytest.mark.timeout(300)

PORT, STORE_PORT = 50051, 5000
BUCKET = "gang"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_bert):
    why = namespaces_unavailable()
    if why:
        pytest.skip(f"multi-host tests need Linux network and mount namespaces: {why}")
    hosts = Hosts(tmp_path_factory.mktemp("gang"), ["coord", "w1", "w2", "laptop", "store"])
    try:
        hosts.env = {
            **os.environ,
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": f"http://{hosts.addresses['store']}:{STORE_PORT}",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",  # two ranks and their workers on a small machine
            "TOKENIZERS_PARALLELISM": "false",
            "TUNEFLEET_COORDINATOR": f"{hosts.addresses['coord']}:{PORT}",
        }
        for inherited in ("TUNEFLEET_ALLOWED_ROOTS", "GLOO_SOCKET_IFNAME"):
            hosts.env.pop(inherited, None)
        hosts.start_store(STORE_PORT, hosts.env)
        mkbucket = f"import fsspec; fsspec.filesystem('s3').mkdir({BUCKET!r})"
        made = hosts.run("laptop", [sys.executable, "-c", mkbucket], hosts.env)
        assert made.returncode == 0, made.stderr
        hosts.start_coordinator(
            PORT, hosts.env, heartbeat_s=0.5, lease_s=10, storage_uri=f"s3://{BUCKET}/inputs"
        )
        for name in ("w1", "w2"):
            worker = [
                sys.executable, "-m", "tunefleet.worker", "--id", name, "--gpus", "0",
                "--poll-s", "1",
                "--artifacts", str(hosts.private / "artifacts"),
                "--artifacts-uri", f"s3://{BUCKET}/artifacts",
                "--input-cache-dir", str(hosts.private / "cache"),
                "--address", hosts.addresses[name],
            ]  # fmt: skip
            hosts.start(name, worker, hosts.env, "worker.log")
        # The laptop's own files: the model and the data exist nowhere else.
        shutil.copytree(tiny_bert, hosts.disk("laptop") / "model")
        make_sentiment_csv(hosts.disk("laptop") / "train.csv", 64)
        make_sentiment_csv(hosts.disk("laptop") / "eval.csv", 32, 1)
        yield hosts
    finally:
        hosts.destroy()


def _wait_for_workers(client: Client, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(client.workers()) < count:
        assert time.monotonic() < deadline, f"{count} workers did not register"
        time.sleep(0.3)


def _wait_done(client: Client, job_id: str, timeout: float = 200):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if job.state.is_terminal():
            return job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} still {job.state.value} after {timeout} s")


def _ftctl(hosts: Hosts, host: str, *args: str, timeout: float = 120):
    return hosts.run(
        host, [sys.executable, "-m", "tunefleet.client.cli", *args], hosts.env, timeout
    )


def test_a_gang_job_across_two_hosts_without_a_shared_file_system(cluster):
    hosts = cluster
    job = {
        "name": "gang-across-hosts",
        "model": {"source": "hf", "name": "./model"},
        "data": {"source": "csv", "train": "train.csv", "eval": "eval.csv", "max_length": 16},
        "finetune": {"strategy": "full"},
        "optimizer": {"name": "adamw", "lr": 5e-3},
        "train": {"epochs": 2, "batch_size": 16, "precision": "no", "log_every_steps": 1},
        "resources": {"nodes": 2, "processes": 1, "gpus": 0},
    }
    (hosts.disk("laptop") / "gang.yaml").write_text(yaml.safe_dump(job))
    with Client(f"{hosts.addresses['coord']}:{PORT}") as client:
        _wait_for_workers(client, 2)
        started = time.monotonic()
        submitted = _ftctl(hosts, "laptop", "submit", str(hosts.private / "gang.yaml"), "-q")
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = submitted.stdout.strip()
        done = _wait_done(client, job_id)
        took = time.monotonic() - started
        assert done.state == JobState.SUCCEEDED, done.reason
        assert (done.attempt, done.restarts) == (1, 0), "the first attempt must succeed"
        events = list(client.events(job_id, follow=False))

        # Both hosts ran a machine rank, each reached at its own bridge address.
        by_rank = {m.rank: m for m in done.members}
        assert sorted(by_rank) == [0, 1]
        assert {m.worker_id for m in done.members} == {"w1", "w2"}
        for member in done.members:
            assert member.address == hosts.addresses[member.worker_id], member
        rank0 = by_rank[0].worker_id
        assert done.rendezvous.split(":")[0] == hosts.addresses[rank0], done.rendezvous
        assert done.worker_id == rank0
    shown = _ftctl(hosts, "laptop", "get", job_id)  # what a user on the laptop sees
    assert shown.returncode == 0, shown.stderr
    for expected in (done.rendezvous, hosts.addresses["w1"], hosts.addresses["w2"]):
        assert expected in shown.stdout, shown.stdout

    # Each worker's ranks listen on the interface of its --address, not on what the host's
    # name resolves to (loopback here, as on many machines).
    for name in ("w1", "w2"):
        said = (hosts.disk(name) / "worker.log").read_text()
        assert f"reach it at {hosts.addresses[name]}, GLOO_SOCKET_IFNAME=tf" in said, said

    # Really distributed: one gloo group of 2 ranks, the second on the other host.
    logs = [e.log.message for e in events if e.kind == "log"]
    assert any("training on 2 CPU processes (gloo)" in m for m in logs), logs
    assert any("machine rank 1 of 2" in m for m in logs), logs
    assert [e for e in events if e.kind == "metrics" and e.metrics.phase == "train"]

    # Rank 0 holds the job's folder: its checkpoints carry both ranks' RNG, and it uploaded
    # the result. The other host has only its own part (its engine log).
    own, other = (hosts.disk(by_rank[r].worker_id) / "artifacts" / job_id for r in (0, 1))
    assert (own / "model" / "config.json").is_file()
    saved = sorted((own / "checkpoints").glob("step-*"))
    assert saved and {"rng-0.pt", "rng-1.pt"} <= {p.name for p in saved[-1].iterdir()}
    assert (other / "attempts" / "1" / "machine-1" / "engine.log").is_file()
    assert not any((other / name).exists() for name in ("model", "checkpoints", "result.json"))
    assert done.artifacts["model_uri"].startswith(f"s3://{BUCKET}/artifacts/{job_id}/")
    got = _ftctl(hosts, "laptop", "artifacts", job_id, "--download", "out", "--name", "model")
    assert got.returncode == 0, got.stdout + got.stderr
    assert (hosts.disk("laptop") / "out" / "model" / "config.json").is_file()
    print(
        f"\n[cluster] gang job across 2 hosts: submit to SUCCEEDED in {took:.1f} s, "
        f"rendezvous {done.rendezvous}, members "
        + ", ".join(f"rank {m.rank} on {m.worker_id} ({m.address})" for m in done.members),
        flush=True,
    )

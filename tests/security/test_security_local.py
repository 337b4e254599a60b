"""LocalCluster (what `ftctl up` runs) with tokens and TLS: the worker child authenticates
with a token of the cluster's own, passed through its environment, never its argv."""

from __future__ import annotations

import pytest
from security_helpers import TOKENS

from tunefleet.client import Client, LocalCluster, NotFound, Unauthenticated
from tunefleet.client.client import RetryPolicy
from tunefleet.coordinator.auth import TokenTable
from tunefleet.coordinator.server import ServerTls
from tunefleet.transport import ChannelSecurity


def test_local_cluster_with_tokens_and_tls(tmp_path, pki, tokens_file):
    cluster = LocalCluster(
        db_path=tmp_path / "db",
        gpus=0,
        worker_log=tmp_path / "worker.log",
        tokens=TokenTable.from_file(tokens_file),
        tls=ServerTls(pki.server_cert, pki.server_key),
        tls_ca=pki.ca,
        coordinator_options={"check_paths": False},
    )
    with cluster:  # returns once the worker registered: over TLS, with its own token
        assert cluster._worker_token not in " ".join(cluster.worker_command())
        with cluster.client() as admin:
            assert [w.id for w in admin.workers()] == ["local-1"]
        spec = {
            "name": "local",
            "model": {"source": "hf", "name": "/m"},
            "data": {"source": "csv", "train": "/t.csv"},
        }
        with Client(cluster.address, token=TOKENS["alice"], tls_ca=pki.ca) as alice:
            job = alice.submit(spec, check_paths=False)
            assert job.get().submitter == "alice"
        bob = Client(cluster.address, token=TOKENS["bob"], tls_ca=pki.ca)
        with bob, pytest.raises(NotFound):
            bob.get(job.id)
        anonymous = Client(
            cluster.address,
            security=ChannelSecurity(tls=True, ca_file=pki.ca),
            retry=RetryPolicy(max_elapsed_s=0.5),
        )
        with anonymous, pytest.raises(Unauthenticated):
            anonymous.list()
    log = (tmp_path / "worker.log").read_text()
    assert "registered" in log
    for token in TOKENS.values():
        assert token not in log

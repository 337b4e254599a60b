"""Fixtures for the no-shared-filesystem tests (issue 15): an S3-compatible object store
(moto in server mode, a real HTTP server speaking the S3 protocol) and its credentials
in the environment, where the workers and clients take them from."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cluster_helpers import FAKE_CREDENTIALS, clear_s3_instances, free_port, wait_port

pytest.importorskip("s3fs", reason="the s3:// tests need s3fs (pip install 'tunefleet[s3]')")
pytest.importorskip("moto.server", reason="the s3:// tests need moto[server] (the dev extra)")


@pytest.fixture(scope="session")
def object_store():
    """http://127.0.0.1:PORT, an empty S3 (moto) for the session, stopped at its end."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_port("127.0.0.1", port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_env(object_store, monkeypatch):
    """This process talks to the test's object store, with fake credentials (env only)."""
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", object_store)
    clear_s3_instances()
    yield object_store
    clear_s3_instances()


@pytest.fixture
def bucket(s3_env, request):
    """A fresh bucket for the test: s3://NAME."""
    import fsspec

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{os.getpid()}"
    fs = fsspec.filesystem("s3")
    if not fs.exists(name):
        fs.mkdir(name)
    return f"s3://{name}"

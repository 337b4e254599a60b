"""Fixtures for the no-shared-filesystem tests (issue 15): an S3-compatible object store
(moto in server mode, a real HTTP server speaking the S3 protocol) and its credentials
in the environment, where the workers and clients take them from."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("s3fs", reason="the s3:// tests need s3fs (pip install 'tunefleet[s3]')")
pytest.importorskip("moto.server", reason="the s3:// tests need moto[server] (the dev extra)")

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 30.0, *, ns: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns is None:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((host, port)) == 0:
                    return
        else:
            probe = f"import socket; socket.create_connection(({host!r}, {port}), 0.5)"
            cmd = ["ip", "netns", "exec", ns, sys.executable, "-c", probe]
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s")


def clear_s3_instances() -> None:
    """s3fs caches file systems (and their endpoint) per process: forget them."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


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

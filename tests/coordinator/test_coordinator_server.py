"""serve(): the foreground coordinator `ftctl server` runs, stopped by a signal."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import grpc
import pytest
from coordinator_helpers import Client, make_spec, wait_for

from tunefleet.coordinator import start_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_until_a_signal_and_keeps_its_data(tmp_path, sig):
    port = _free_port()
    db = tmp_path / "state" / "coordinator.db"
    code = (
        "from tunefleet.coordinator import serve; "
        f"serve('127.0.0.1:{port}', {str(db)!r}, check_paths=False)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    client = Client(f"127.0.0.1:{port}")
    try:
        job = wait_for(lambda: _try_submit(client), timeout=30)  # a loaded CI host starts slowly
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    output = proc.stdout.read().decode()
    proc.stdout.close()
    assert f"listening on 127.0.0.1:{port}" in output

    with start_server("127.0.0.1:0", db, check_paths=False) as server:
        again = Client(server.address)
        assert again.get(job.id).id == job.id
        again.close()


def _try_submit(client: Client):
    try:
        return client.submit(make_spec("served"))
    except grpc.RpcError:
        return None


def test_listen_address_in_use_is_a_clear_error(tmp_path):
    with start_server("127.0.0.1:0", tmp_path / "a.db") as first:
        taken = f"127.0.0.1:{first.port}"
        with pytest.raises(RuntimeError, match=f"cannot listen on {taken}"):
            start_server(taken, tmp_path / "b.db")


def test_bad_listen_address_is_refused(tmp_path):
    with pytest.raises(ValueError, match="HOST:PORT"):
        start_server("localhost", tmp_path / "c.db")


def test_a_database_is_served_by_one_coordinator_at_a_time(tmp_path):
    """In one process as across processes (tests/faults): a second start_server on a
    database another serves is refused, naming the owner, until that one stops."""
    db = tmp_path / "coordinator.db"
    with start_server("127.0.0.1:0", db, check_paths=False) as first:
        owner = f"pid {os.getpid()}, {first.address}"
        with pytest.raises(RuntimeError, match=re.escape(f"another coordinator ({owner})")):
            start_server("127.0.0.1:0", tmp_path / "." / "coordinator.db", check_paths=False)
        client = Client(first.address)
        job = client.submit(make_spec("still-served"))
        client.close()
    with start_server("127.0.0.1:0", db, check_paths=False) as second:
        client = Client(second.address)
        assert [j.id for j in client.list_jobs()] == [job.id]
        client.close()

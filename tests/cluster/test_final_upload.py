"""The final upload of a succeeded job against a store that fails for a while: a real
coordinator, a WorkerDaemon with a scripted engine, and moto reached through a relay that
the test opens only after the worker's first try failed. A blip at the end used to fail a
finished training at once (FAILED, not retried)."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from pathlib import Path

import fsspec
import pytest
from cluster_helpers import clear_s3_instances, free_port

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


def _relay(listen_port: int, target_port: int) -> socket.socket:
    """Forwards every connection to 127.0.0.1:listen_port to target_port; close() stops."""
    server = socket.create_server(("127.0.0.1", listen_port))

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server


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
    relay = None
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
            relay = _relay(relay_port, store_port)  # the store is back
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
        if relay is not None:
            relay.close()
        clear_s3_instances()

"""Worker test fixtures: a real coordinator and WorkerDaemons in threads whose training
process is scripted_engine.py (a real child process, without torch)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

# The coordinator tests' helpers (specs, a gRPC client, wait_for) serve here too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "coordinator"))

from coordinator_helpers import Client  # noqa: E402
from worker_helpers import scripted_command  # noqa: E402

from tunefleet.coordinator import start_server  # noqa: E402
from tunefleet.worker import WorkerDaemon  # noqa: E402


@pytest.fixture
def coordinator(tmp_path):
    server = start_server(
        "127.0.0.1:0",
        tmp_path / "coordinator.db",
        heartbeat_interval_s=0.2,
        lease_timeout_s=5.0,
        check_paths=False,
    )
    yield server
    server.stop(grace=0)


@pytest.fixture
def client(coordinator):
    c = Client(coordinator.address)
    yield c
    c.close()


@pytest.fixture
def start_daemon(coordinator, tmp_path):
    """Starts WorkerDaemons in threads; each is stopped and joined at teardown."""
    running: list[tuple[WorkerDaemon, threading.Thread]] = []

    def start(mode: str = "succeed", *, address: str | None = None, **options) -> WorkerDaemon:
        options.setdefault("worker_id", f"w-{len(running) + 1}")
        options.setdefault("gpus", 0)
        options.setdefault("poll_s", 0.5)
        options.setdefault("artifacts_root", tmp_path / "artifacts")
        daemon = WorkerDaemon(
            address or coordinator.address, command_factory=scripted_command(mode), **options
        )
        thread = threading.Thread(target=daemon.run, name=f"daemon-{options['worker_id']}")
        thread.start()
        running.append((daemon, thread))
        return daemon

    yield start
    for daemon, thread in running:
        daemon.stop()
        thread.join(timeout=20)
        assert not thread.is_alive(), "WorkerDaemon.run() did not return after stop()"

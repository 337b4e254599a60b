"""A real coordinator on 127.0.0.1, port 0, with a fresh database per test."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from coordinator_helpers import Client

from tunefleet.coordinator import CoordinatorServer, start_server


@pytest.fixture
def start_coordinator(tmp_path) -> Callable[..., CoordinatorServer]:
    """Starts coordinators on tmp_path/coordinator.db; all are stopped at teardown."""
    servers: list[CoordinatorServer] = []

    def start(**options) -> CoordinatorServer:
        options.setdefault("check_paths", False)
        server = start_server("127.0.0.1:0", tmp_path / "coordinator.db", **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=0)


@pytest.fixture
def coordinator(start_coordinator) -> CoordinatorServer:
    return start_coordinator()


@pytest.fixture
def client(coordinator):
    c = Client(coordinator.address)
    yield c
    c.close()

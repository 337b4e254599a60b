"""A real coordinator with tokens (and optionally TLS) on 127.0.0.1, port 0."""

from __future__ import annotations

import pytest
from security_helpers import TOKENS, Caller, make_pki, write_tokens_file

from tunefleet.coordinator import start_server
from tunefleet.coordinator.auth import TokenTable


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tokens_file(tmp_path):
    return write_tokens_file(tmp_path / "tokens.json")


@pytest.fixture
def start(tmp_path):
    """Starts coordinators (check_paths off); all are stopped at teardown."""
    servers = []

    def run(listen: str = "127.0.0.1:0", **options):
        options.setdefault("check_paths", False)
        server = start_server(listen, tmp_path / f"coordinator-{len(servers)}.db", **options)
        servers.append(server)
        return server

    yield run
    for server in servers:
        server.stop(grace=0)


@pytest.fixture
def authed(start, tokens_file):
    """A plaintext coordinator on loopback that requires tokens."""
    return start(tokens=TokenTable.from_file(tokens_file))


@pytest.fixture
def callers(authed):
    """Raw callers by name, plus "anonymous" (no token) and "forger" (an unknown token)."""
    made = {name: Caller(authed.address, token) for name, token in TOKENS.items()}
    made["anonymous"] = Caller(authed.address)
    made["forger"] = Caller(authed.address, "not-a-known-token-0123456789")
    yield made
    for caller in made.values():
        caller.close()

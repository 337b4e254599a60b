"""The dashboard against a real fleet: a coordinator with tokens (users alice and bob) on
127.0.0.1 port 0, a real worker training the tiny BERT, the dashboard on port 0, and
Debian's headless Chromium driven by Playwright. One fleet for the whole module: starting
a worker (torch) is the slow part, and the tests read as one user's session anyway.
"""

from __future__ import annotations

import json

import pytest
from dashboard_helpers import CHROMIUM, TOKENS


def pytest_collection_modifyitems(items):
    if CHROMIUM is None:
        skip = pytest.mark.skip(reason="no Chromium: apt-get install chromium (see Makefile)")
        for item in items:
            if "browser" in item.nodeid:
                item.add_marker(skip)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_bert, sentiment_data):
    """(cluster, dashboard, job folder): alice and bob are users; the worker is real."""
    pytest.importorskip("starlette")
    from tunefleet.client import LocalCluster
    from tunefleet.client.dashboard import DashboardServer
    from tunefleet.coordinator.auth import TokenTable, hash_token

    root = tmp_path_factory.mktemp("dash")
    tokens_file = root / "tokens.json"
    entries = [
        {"name": n, "role": "user", "token_sha256": hash_token(t)} for n, t in TOKENS.items()
    ]
    tokens_file.write_text(json.dumps(entries))
    tokens_file.chmod(0o600)
    tokens = TokenTable.from_file(tokens_file)
    cluster = LocalCluster(
        gpus=0,
        tokens=tokens,
        worker_log=root / "worker.log",
        db_path=root / "coordinator.db",
    )
    with (
        cluster,
        DashboardServer(
            "127.0.0.1:0", coordinator=cluster.address, refresh_s=1.0, stream_s=3.0
        ) as dash,
    ):
        yield cluster, dash, root


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()

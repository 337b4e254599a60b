"""`ftctl dashboard` and the dashboard `ftctl up` starts, as real processes: no browser
needed to check that they serve, where, and that the API wants a session."""

from __future__ import annotations

import http.cookiejar
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tunefleet.client.cli import main
from tunefleet.client.dashboard import DashboardServer

pytest.importorskip("starlette")
FTCTL = Path(sys.executable).parent / "ftctl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def test_dashboard_refuses_to_serve_off_loopback_without_a_certificate(capsys):
    assert main(["dashboard", "--listen", "0.0.0.0:0"]) == 1
    assert "loopback" in capsys.readouterr().err


def test_the_dashboard_names_the_coordinator_it_uses_and_refuses_a_malformed_one(
    capsys, monkeypatch
):
    """Without --coordinator the banner said "(coordinator default)" whatever
    $TUNEFLEET_COORDINATOR held, and a malformed address failed only in the browser."""
    monkeypatch.delenv("TUNEFLEET_COORDINATOR", raising=False)
    assert DashboardServer("127.0.0.1:0").coordinator == "127.0.0.1:50051"
    monkeypatch.setenv("TUNEFLEET_COORDINATOR", "127.0.0.1:59999")
    assert DashboardServer("127.0.0.1:0").coordinator == "127.0.0.1:59999"
    assert DashboardServer("127.0.0.1:0", coordinator="[::1]:1").coordinator == "[::1]:1"
    monkeypatch.setenv("TUNEFLEET_COORDINATOR", "http://127.0.0.1:59999")
    assert main(["dashboard", "--listen", "127.0.0.1:0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: $TUNEFLEET_COORDINATOR: expected HOST:PORT"), err


def test_ftctl_dashboard_on_a_coordinator_without_tokens_needs_no_login():
    """Without tokens the first page view opens a session by itself; the API still
    answers 401 to a request that has no session cookie."""
    from tunefleet.client import LocalCluster

    port = free_port()
    with LocalCluster(worker=False) as cluster:
        proc = subprocess.Popen(
            [
                str(FTCTL),
                "dashboard",
                "--listen",
                f"127.0.0.1:{port}",
                "--coordinator",
                cluster.address,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(url + "/static/dashboard.css")
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(url + "/api/jobs", timeout=5)
            assert e.value.code == 401
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            assert opener.open(url + "/", timeout=5).status == 200
            assert {c.name for c in jar} == {"tf_session", "tf_csrf"}
            assert json.loads(opener.open(url + "/api/jobs", timeout=5).read()) == {"jobs": []}
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        assert f"dashboard on {url}/" in proc.stderr.read()


def test_ftctl_up_starts_the_dashboard_and_prints_its_url(tmp_path):
    port, dash_port = free_port(), free_port()
    proc = subprocess.Popen(
        [str(FTCTL), "up", "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "db")]
        + ["--artifacts", str(tmp_path / "a"), "--dashboard", f"127.0.0.1:{dash_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(5)]
        url = f"http://127.0.0.1:{dash_port}/"
        assert any(f"dashboard: {url}" in line for line in lines), lines
        assert urllib.request.urlopen(url, timeout=5).status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_over_https_to_a_tls_coordinator_the_cookies_are_secure(tmp_path):
    """The dashboard's own HTTPS (--https-cert/--https-key) and its TLS channel to the
    coordinator (--tls-ca) together: the session cookie gets Secure, and data flows."""
    import ssl

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
    from security_helpers import make_pki

    from tunefleet.client import LocalCluster
    from tunefleet.client.dashboard import DashboardServer
    from tunefleet.coordinator.server import ServerTls
    from tunefleet.transport import ChannelSecurity

    pki = make_pki(tmp_path)
    tls = ServerTls(pki.server_cert, pki.server_key)
    with LocalCluster(worker=False, tls=tls, tls_ca=pki.ca) as cluster:
        security = ChannelSecurity(tls=True, ca_file=pki.ca)
        server = DashboardServer(
            "127.0.0.1:0",
            coordinator=cluster.address,
            security=security,
            tls_cert=str(pki.server_cert),
            tls_key=str(pki.server_key),
        )
        with server as dash:
            assert dash.url.startswith("https://")
            context = ssl.create_default_context(cafile=str(pki.ca))
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(
                urllib.request.HTTPSHandler(context=context),
                urllib.request.HTTPCookieProcessor(jar),
            )
            assert opener.open(dash.url + "/", timeout=10).status == 200
            assert {c.name: c.secure for c in jar} == {"tf_session": True, "tf_csrf": True}
            workers = json.loads(opener.open(dash.url + "/api/workers", timeout=10).read())
            assert workers["workers"] == []

"""The web dashboard: jobs, a job's live curves and events, sweeps and workers in a browser.

    from tunefleet.client.dashboard import DashboardServer

    with DashboardServer("127.0.0.1:0", coordinator="127.0.0.1:50051") as dash:
        print(dash.url)

It is one more client of the coordinator, through the SDK only (an import contract keeps it
from importing the coordinator or the worker), so the coordinator stays the one place that
decides who sees what: each browser's calls carry that user's own token (auth.py).
Loopback-only unless given a certificate: a session cookie must not cross a network in
clear. Needs the `dashboard` extra (starlette, uvicorn, sse-starlette).
"""

from __future__ import annotations

import os
import socket
import threading
import time

from tunefleet.defaults import DEFAULT_ADDRESS, ENV_COORDINATOR
from tunefleet.transport import ChannelSecurity, check_port, check_target, is_loopback

__all__ = ["DashboardServer", "missing_dependencies"]


def missing_dependencies() -> list[str]:
    """The dashboard extra's packages that are not installed (empty when it can run)."""
    import importlib.util

    wanted = {"starlette": "starlette", "uvicorn": "uvicorn", "sse_starlette": "sse-starlette"}
    return [pkg for mod, pkg in wanted.items() if importlib.util.find_spec(mod) is None]


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    check_port(listen)
    return host.strip("[]"), int(port)


class DashboardServer:
    """The dashboard app served by uvicorn on a thread of this process.

    Args:
        listen: HOST:PORT to serve on (port 0: any free port; `url` says which).
        coordinator: The coordinator's address (default: the SDK's, $TUNEFLEET_COORDINATOR).
        security: How to reach the coordinator (TLS); its token, if any, is not used for
            browsers, which log in with their own.
        tls_cert, tls_key: Serve HTTPS with this certificate (required off loopback).
        refresh_s: How often an open jobs/sweeps/workers page is refreshed server-side.
        stream_s: How long one response of a job's event stream lasts before the browser
            reconnects and resumes (by Last-Event-ID).
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:8080",
        *,
        coordinator: str | None = None,
        security: ChannelSecurity | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        refresh_s: float = 2.0,
        stream_s: float = 120.0,
    ):
        host, port = split_listen(listen)
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("give both --dashboard-tls-cert and --dashboard-tls-key, or neither")
        if not is_loopback(host) and not tls_cert:
            raise ValueError(
                f"the dashboard serves loopback only without a certificate, not {host}: "
                "session cookies must not cross a network in clear (give --https-cert PEM --https-key PEM)"
            )
        self.host, self.port = host, port
        self.tls_cert, self.tls_key = tls_cert, tls_key
        # Resolved now, as the SDK would on each request: the banner names the address
        # in use ("coordinator default" named none), and a malformed one fails here.
        self.coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or DEFAULT_ADDRESS
        check_target(self.coordinator, "--coordinator" if coordinator else f"${ENV_COORDINATOR}")
        self.security = security or ChannelSecurity()
        self.refresh_s = refresh_s
        self.stream_s = stream_s
        self._server = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def app(self):
        from tunefleet.client.dashboard.app import create_app
        from tunefleet.client.dashboard.auth import Gateway

        gateway = Gateway(self.coordinator, self.security)
        return create_app(
            gateway,
            secure_cookies=bool(self.tls_cert),
            refresh_s=self.refresh_s,
            stream_s=self.stream_s,
        )

    def _config(self):
        import uvicorn

        return uvicorn.Config(
            self.app(),
            log_level="warning",
            access_log=False,  # URLs carry no secrets, but nobody asked for a line per poll
            ssl_certfile=self.tls_cert,
            ssl_keyfile=self.tls_key,
            timeout_graceful_shutdown=2,
        )

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise RuntimeError(
                f"cannot serve the dashboard on {self.host}:{self.port}: {e}"
            ) from None
        self.port = sock.getsockname()[1]
        return sock

    def start(self, timeout: float = 15.0) -> DashboardServer:
        """Serve on a background thread; return once it accepts connections."""
        import uvicorn

        self._socket = self._bind()
        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            daemon=True,
            name="tunefleet-dashboard",
        )
        self._thread.start()
        end = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.05)
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C / SIGTERM (uvicorn's own signal handling)."""
        import uvicorn

        self._socket = self._bind()
        uvicorn.Server(self._config()).run(sockets=[self._socket])

    def stop(self) -> None:
        """Stop serving: gracefully, then (open event streams can hold on) by force."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=3)
            self._server.force_exit = True
            self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

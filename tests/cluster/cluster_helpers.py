"""Helpers for the no-shared-filesystem tests (issue 15): ports, fake store credentials,
s3fs's instance cache. A module of its own (not conftest) so that importing it works
whichever test folders a run collects together."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time

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


def relay(listen_port: int, target_port: int, *, delay_s: float = 0.0) -> socket.socket:
    """Forwards each connection to 127.0.0.1:listen_port to target_port, waiting `delay_s`
    before each chunk the target sends back (a slow store); close() stops accepting. A
    store that is down until the test calls this, or one that is slow."""
    server = socket.create_server(("127.0.0.1", listen_port))

    def pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                time.sleep(delay)
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
            for a, b, delay in ((client, upstream, 0.0), (upstream, client, delay_s)):
                threading.Thread(target=pipe, args=(a, b, delay), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server

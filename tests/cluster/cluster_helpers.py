"""Helpers for the no-shared-filesystem tests (issue 15): ports, fake store credentials,
s3fs's instance cache. A module of its own (not conftest) so that importing it works
whichever test folders a run collects together."""

from __future__ import annotations

import socket
import subprocess
import sys
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

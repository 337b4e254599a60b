"""A whole tunefleet on one machine: the coordinator in this process, one worker as a child.

    with LocalCluster() as cluster:           # port 0 = any free port, temp db
        with cluster.client() as client:
            client.submit("job.yaml").wait()

`ftctl up` is this class in the foreground. The worker runs in its own process group, so
stopping the cluster also stops any training processes the worker started.

With `tokens`, the cluster adds two tokens of its own that live only as long as it does:
one the worker gets through its environment (never its command line, which `ps` shows),
and one `cluster.client()` uses (admin). With `tls`, give `tls_ca` too: the CA its own
clients and the worker trust.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from tunefleet.client.client import Client, RetryPolicy
from tunefleet.client.errors import TunefleetError
from tunefleet.transport import ENV_TLS_CA, ENV_TOKEN, ChannelSecurity

__all__ = ["LocalCluster", "connect_address"]


def connect_address(listen: str, port: int) -> str:
    """The address a client on this machine dials for a server bound to `listen`."""
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    if host in ("", "0.0.0.0", "[::]", "::", "*"):
        host = "127.0.0.1"
    return f"{host}:{port}"


class LocalCluster:
    """A coordinator (in-process) plus one worker (`python -m tunefleet.worker`, a child).

    Args:
        listen: Coordinator bind address; port 0 picks a free port.
        db_path: Coordinator database. Default: a temporary folder removed on stop().
        artifacts: The worker's artifact root. Default: next to the database.
        gpus: GPUs the worker offers (default: what it detects).
        worker: Start the worker (False = coordinator only).
        worker_id: The worker's id.
        worker_log: Where the worker's stdout/stderr go: a path, an open file, or None to
            share this process's terminal.
        worker_env: Extra environment variables for the worker.
        coordinator_options: Extra keyword arguments for `tunefleet.coordinator.start_server`
            (heartbeat_interval_s, lease_timeout_s, check_paths...).
        tokens: A `tunefleet.coordinator.auth.TokenTable`: the coordinator requires tokens.
        tls: A `tunefleet.coordinator.server.ServerTls`: the coordinator speaks TLS.
        tls_ca: The CA (PEM file) that signed `tls`'s certificate.
        allowed_roots: The worker's `--allowed-root` folders (see worker/path_policy.py).
        worker_args: More flags of `python -m tunefleet.worker`, e.g. ("--no-warm-engine",).
    """

    def __init__(
        self,
        *,
        listen: str = "127.0.0.1:0",
        db_path: str | os.PathLike | None = None,
        artifacts: str | os.PathLike | None = None,
        gpus: int | None = None,
        worker: bool = True,
        worker_id: str = "local-1",
        worker_log: str | os.PathLike | IO | None = None,
        worker_env: dict[str, str] | None = None,
        coordinator_options: dict[str, Any] | None = None,
        tokens: Any = None,
        tls: Any = None,
        tls_ca: str | os.PathLike | None = None,
        allowed_roots: tuple[str | os.PathLike, ...] = (),
        worker_args: tuple[str, ...] = (),
    ):
        self._listen = listen
        self._tmp: str | None = None
        if db_path is None:
            self._tmp = tempfile.mkdtemp(prefix="tunefleet-local-")
            db_path = Path(self._tmp) / "coordinator.db"
        self.db_path = Path(db_path)
        self.artifacts = Path(artifacts) if artifacts else self.db_path.parent / "artifacts"
        self.gpus = gpus
        self.start_worker = worker
        self.worker_id = worker_id
        self.worker_log = worker_log
        self.worker_env = dict(worker_env or {})
        self.coordinator_options = dict(coordinator_options or {})
        self.allowed_roots = tuple(allowed_roots)
        self.worker_args = tuple(worker_args)
        self.tls_ca = Path(tls_ca) if tls_ca else None
        if tls is not None and self.tls_ca is None:
            raise ValueError("a LocalCluster with tls needs tls_ca, the CA its clients trust")
        self._worker_token: str | None = None
        self._admin_token: str | None = None
        if tokens is not None:
            from tunefleet.coordinator.auth import Role, new_token

            tokens = tokens.copy()
            self._worker_token, self._admin_token = new_token(), new_token()
            tokens.add(f"{worker_id}-worker", Role.WORKER, self._worker_token)
            tokens.add("local-cluster", Role.ADMIN, self._admin_token)
            self.coordinator_options["tokens"] = tokens
        if tls is not None:
            self.coordinator_options["tls"] = tls
        self.server = None
        self.worker: subprocess.Popen | None = None
        self._log_file: IO | None = None
        self.address: str | None = None

    # --- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        if self.server is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, *, wait: bool = True, timeout: float = 120.0) -> LocalCluster:
        """Start the coordinator and the worker; with `wait`, return once the worker is LIVE."""
        try:
            self.start_coordinator()
            if self.start_worker:
                self._spawn_worker()
                if wait:
                    self.wait_for_worker(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_coordinator(self) -> None:
        """Start (or, after stop_coordinator, restart on the same port) the coordinator."""
        from tunefleet.coordinator import start_server

        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.server = start_server(
            listen=self._listen, db_path=str(self.db_path), **self.coordinator_options
        )
        self.address = connect_address(self._listen, self.server.port)
        # A restart must come back on the same port: clients and the worker hold it.
        self._listen = f"{self._listen.rsplit(':', 1)[0]}:{self.server.port}"

    def stop_coordinator(self, grace: float | None = 1.0) -> None:
        if self.server is not None:
            self.server.stop(grace)
            self.server = None

    def restart_coordinator(self, *, down_s: float = 0.0) -> None:
        """Stop the coordinator and start it again on the same port and database."""
        self.stop_coordinator()
        time.sleep(down_s)
        self.start_coordinator()

    def stop(self, grace: float = 10.0) -> None:
        """Stop the worker (its whole process group) first, then the coordinator."""
        self.stop_worker(grace)
        self.stop_coordinator(min(grace, 2.0))
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # --- the worker -------------------------------------------------------------------

    def worker_command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tunefleet.worker", "--coordinator", str(self.address)]
        cmd += ["--artifacts", str(self.artifacts), "--id", self.worker_id]
        if self.gpus is not None:
            cmd += ["--gpus", str(self.gpus)]
        for root in self.allowed_roots:
            cmd += ["--allowed-root", str(root)]
        return cmd + list(self.worker_args)

    def _spawn_worker(self) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        out: Any = None
        if isinstance(self.worker_log, (str, os.PathLike)):
            self._log_file = out = open(self.worker_log, "ab")  # noqa: SIM115 (closed in stop)
        elif self.worker_log is not None:
            out = self.worker_log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.worker_env}
        if self._worker_token is not None:
            env[ENV_TOKEN] = self._worker_token
        if self.tls_ca is not None:
            env[ENV_TLS_CA] = str(self.tls_ca)
        self.worker = subprocess.Popen(
            self.worker_command(),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            stdin=subprocess.DEVNULL,
            env=env,
            # Its own process group: Ctrl-C in our terminal reaches only us, and stop()
            # can signal the worker together with the training processes it started.
            start_new_session=True,
        )

    def worker_exit_code(self) -> int | None:
        """None while the worker runs (or was never started), else its exit code."""
        return None if self.worker is None else self.worker.poll()

    def wait_for_worker(self, *, timeout: float = 120.0) -> None:
        """Block until the coordinator lists our worker as LIVE."""
        end = time.monotonic() + timeout
        with self.client(retry=RetryPolicy(max_elapsed_s=1.0)) as client:
            while True:
                code = self.worker_exit_code()
                if code is not None:
                    raise TunefleetError(f"the local worker exited with code {code}")
                try:
                    if any(w.id == self.worker_id and w.state == "LIVE" for w in client.workers()):
                        return
                except TunefleetError:
                    pass  # the coordinator is up; a transient answer is not fatal here
                if time.monotonic() > end:
                    raise TunefleetError(
                        f"the local worker did not register within {timeout:.0f} s"
                    )
                time.sleep(0.2)

    def stop_worker(self, grace: float = 10.0) -> None:
        proc, self.worker = self.worker, None
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        if proc is not None:
            # Whatever the worker started (training processes) goes with it.
            _signal_group(proc, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # --- convenience ------------------------------------------------------------------

    def client(self, **kwargs) -> Client:
        """A Client for this cluster (keyword arguments go to Client). Unless given other
        credentials, it uses the cluster's own admin token and CA."""
        if self.address is None:
            raise TunefleetError("the local cluster is not started")
        own = {"token", "tls_ca", "tls_cert", "tls_key", "tls", "security"}
        if not own & set(kwargs):
            kwargs["security"] = ChannelSecurity(
                token=self._admin_token, tls=self.tls_ca is not None, ca_file=self.tls_ca
            )
        return Client(self.address, **kwargs)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # pgid == pid: started with start_new_session

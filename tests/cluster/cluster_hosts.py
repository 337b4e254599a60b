"""Simulated machines for the multi-host tests: each host is a Linux network namespace on
one bridge, and each process it runs has a mount namespace of its own in which BASE/private
is that host's disk (BASE/hosts/NAME) and no other host's disk is visible. So a file on the
laptop is not on a worker, a worker's data is not on the coordinator: as across real
machines, only the network joins them (and the software, shared like an installed image).

Everything made is removed by `Hosts.destroy()` (processes by their group, namespaces, the
bridge), which the fixture runs even after a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=20)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot make network and mount namespaces (None: it can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"tfprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace: {getattr(exc, 'stderr', '') or exc}"
    try:
        cmd = ["ip", "netns", "exec", probe, "unshare", "-m", "--propagation", "private", "true"]
        if subprocess.run(cmd, capture_output=True, timeout=20).returncode != 0:
            return "cannot create a mount namespace (unshare -m)"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def remove_stale() -> None:
    """Namespaces and bridges left by a test run killed before its cleanup (SIGKILL): they
    carry the run's pid, so those of a process no longer alive are removed."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for ns in re.findall(r"^(tf(\d+)-\S+)", listed, re.MULTILINE):
        if not _alive(int(ns[1])):
            _ip("netns", "del", ns[0], check=False)
    for bridge, pid in re.findall(r"^\d+: (tfbr(\d+))[:@]", links, re.MULTILINE):
        if not _alive(int(pid)):
            _ip("link", "del", bridge, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Hosts:
    """Named hosts 10.N.M.k on bridge tfbrN; the test process reaches them from .254."""

    def __init__(self, base: Path, names: list[str]):
        remove_stale()
        tag = os.getpid() % 100000
        self.pid = os.getpid()
        self.base = base
        self.bridge = f"tfbr{self.pid}"
        self.subnet = f"10.{200 + tag % 50}.{tag % 250}"
        self.tag = tag
        self.addresses: dict[str, str] = {}
        self.namespaces: dict[str, str] = {}
        self.links: dict[str, str] = {}  # host -> its end of the veth pair (in its namespace)
        self.processes: list[subprocess.Popen] = []
        (base / "private").mkdir(parents=True, exist_ok=True)
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, name in enumerate(names, start=1):
                self._add(name, i)
        except BaseException:
            self.destroy()
            raise

    def _add(self, name: str, i: int) -> None:
        ns, veth = f"tf{self.pid}-{name}", f"tf{self.tag}v{i}"
        _ip("netns", "add", ns)
        self.namespaces[name] = ns
        self.links[name] = veth
        _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}b")
        _ip("link", "set", veth, "netns", ns)
        _ip("link", "set", f"{veth}b", "master", self.bridge)
        _ip("link", "set", f"{veth}b", "up")
        address = f"{self.subnet}.{i}"
        _ip("addr", "add", f"{address}/24", "dev", veth, ns=ns)
        _ip("link", "set", veth, "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        self.addresses[name] = address
        self.disk(name).mkdir(parents=True, exist_ok=True)

    def set_link(self, name: str, *, up: bool) -> None:
        """Cuts host `name` off the network (its processes run on, reaching nobody) or
        connects it again: its link taken down or up inside its namespace."""
        _ip("link", "set", self.links[name], "up" if up else "down", ns=self.namespaces[name])

    def disk(self, name: str) -> Path:
        """The host's disk as the test process sees it (the host sees it as BASE/private)."""
        return self.base / "hosts" / name

    @property
    def private(self) -> Path:
        return self.base / "private"

    def command(self, name: str, argv: list[str]) -> list[str]:
        """argv run on host `name`: its network, its disk at BASE/private, no other disk."""
        hosts, private = shlex.quote(str(self.base / "hosts")), shlex.quote(str(self.private))
        own = shlex.quote(str(self.disk(name)))
        script = (
            f"mount --bind {own} {private} && mount -t tmpfs tmpfs {hosts} && "
            f"cd {private} && exec {shlex.join(argv)}"
        )
        return [
            "ip", "netns", "exec", self.namespaces[name],
            "unshare", "-m", "--propagation", "private", "sh", "-c", script,
        ]  # fmt: skip

    def start(self, name: str, argv: list[str], env: dict, log: str) -> subprocess.Popen:
        out = (self.disk(name) / log).open("ab")
        proc = subprocess.Popen(
            self.command(name, argv),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.processes.append(proc)
        return proc

    def start_store(self, port: int, env: dict) -> subprocess.Popen:
        """moto in server mode (S3-compatible) on host "store", once it listens."""
        from cluster_helpers import wait_port

        argv = [sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", str(port)]
        proc = self.start("store", argv, env, "store.log")
        wait_port(self.addresses["store"], port, ns=self.namespaces["store"])
        return proc

    def start_coordinator(
        self, port: int, env: dict, *, heartbeat_s: float, lease_s: float, storage_uri: str = ""
    ) -> subprocess.Popen:
        """`python -m tunefleet.coordinator` on host "coord", its database on that host's
        own disk, once it listens."""
        from cluster_helpers import wait_port

        argv = [
            sys.executable, "-m", "tunefleet.coordinator",
            "--listen", f"{self.addresses['coord']}:{port}", "--insecure",
            "--db", str(self.private / "coordinator.db"),
            "--heartbeat-s", str(heartbeat_s), "--lease-s", str(lease_s),
        ]  # fmt: skip
        if storage_uri:
            argv += ["--storage-uri", storage_uri]
        proc = self.start("coord", argv, env, "coordinator.log")
        wait_port(self.addresses["coord"], port)
        return proc

    def run(self, name: str, argv: list[str], env: dict, timeout: float = 120):
        return subprocess.run(
            self.command(name, argv), env=env, capture_output=True, text=True, timeout=timeout
        )

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 30) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def destroy(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                self.stop(proc, signal.SIGKILL, wait=10)
        for ns in self.namespaces.values():
            # Anything still running in the namespace (a training process) goes with it.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)

"""How the worker starts a training process: fresh, or forked by its warm engine host.

Fresh: `subprocess.Popen` of the engine's command (worker/engine/launch.py) in a session of
its own, run through `dies_with_parent`. Every such process spends seconds importing torch,
transformers and accelerate before it reads its spec.

Warm: the worker's engine host (worker/engine/warm_host.py, one per worker, started at the
first job that can use it) has done those imports once and forks a child per attempt. The
child is set up as the fresh process would be (own session, dies with the worker, engine.log
as stdout/stderr, the attempt's environment and cwd) and runs the same entry point. It is
the host's child, not ours, so what JobRunner gets is a `WarmProcess`: the part of Popen it
uses (pid, poll, wait, returncode), with the exit status the host reports. JobRunner signals
either kind the same way, through its process group.

Warm when all of these hold, else fresh (as before):
- the worker has a host (the default for the engine; `--no-warm-engine` turns it off; a
  worker running its own command_factory, or not on Linux, has none);
- the command is the single-process engine (`python -m tunefleet.worker.engine ...`): a
  multi-process or multi-node job keeps `accelerate launch`, which starts its own ranks;
- the attempt's environment equals the host's in every variable but the per-attempt ones
  (PER_ATTEMPT_ENV). Libraries read some variables once, at import (HF_HUB_OFFLINE in
  huggingface_hub's constants, TOKENIZERS_PARALLELISM, OMP_NUM_THREADS...), and a forked
  child inherits what the host read; rather than keep a list of those, any other difference
  means a fresh process. The host is started with the environment of the attempt that
  starts it, less the per-attempt variables;
- the host is healthy. One that died is started again by the next attempt; one that could
  not start (or found forking unsafe after its imports) is tried again after
  `retry_after_s`, meanwhile attempts start fresh.

gRPC and fork: the worker runs gRPC threads, so it never forks without exec itself. The host
is started with Popen (fork+exec, as any training process) and is the only process that
forks bare: it is single-threaded and has no gRPC in it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

from tunefleet.worker.engine.launch import ENGINE_MODULE
from tunefleet.worker.engine.lineage import SPEC_HASH_ENV
from tunefleet.worker.engine.warm_host import MAX_MESSAGE_BYTES, decode, encode

log = logging.getLogger(__name__)

HOST_MODULE = "tunefleet.worker.engine.warm_host"
# Set per attempt (by JobRunner) and read by the engine only at run time.
PER_ATTEMPT_ENV = frozenset({"TUNEFLEET_JOB_ID", "TUNEFLEET_ATTEMPT", SPEC_HASH_ENV})
_REPLY_TIMEOUT_S = 30.0


class HostUnavailable(Exception):
    """The engine host cannot serve this attempt; it starts fresh instead."""


class WarmProcess:
    """A training process forked by the engine host: the part of subprocess.Popen that
    JobRunner uses. Its exit status comes from the host (the process is not our child);
    thread-safe."""

    def __init__(self, pid: int, args: list[str]):
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._exited = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _set_returncode(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()


# What JobRunner watches and signals: either kind of training process.
TrainingProcess = subprocess.Popen | WarmProcess


class _HostProcess:
    """One running engine host: the process, its control socket, the thread reading what
    it says, and the children it forked that have not exited yet."""

    def __init__(self, env: dict[str, str], cwd: str):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                dies_with_parent(
                    [sys.executable, "-m", HOST_MODULE, "--control-fd", str(theirs.fileno())]
                ),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # stderr: the worker's, for the host's own errors
                cwd=cwd,
                env=env,
                # Out of the worker's process group: a Ctrl-C or a group SIGTERM meant for the
                # worker must not kill the host (and its child with it) before the worker
                # drains that child. The host dies with the worker (PDEATHSIG).
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.env = env
        self.sock = ours
        self.closing = False
        self.lost = threading.Event()
        self.children: dict[int, WarmProcess] = {}
        self._replies: queue.Queue[dict | None] = queue.Queue()
        self._spawning: list[str] = []
        threading.Thread(target=self._read, name="tunefleet-engine-host", daemon=True).start()

    def reply(self, timeout: float) -> dict | None:
        """The host's next answer; None when it is gone or silent for `timeout`."""
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            return None

    def spawn(self, args: list[str], env: dict[str, str], cwd: str, log_fd: int) -> dict | None:
        self._spawning = args
        message = encode({"spawn": {"args": args, "env": env, "cwd": cwd}})
        try:
            socket.send_fds(self.sock, [message], [log_fd])
        except OSError:
            return None
        return self.reply(_REPLY_TIMEOUT_S)

    def _read(self) -> None:
        """Routes the host's messages: exits to their WarmProcess, the rest to `reply`. A
        started child is registered here, before any exit of it can be read."""
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE_BYTES)
            except OSError:
                data = b""
            if not data:
                break
            try:
                message = decode(data)
            except ValueError:
                log.error("the warm engine host sent an unreadable message: %r", data[:200])
                break
            if "exited" in message:
                child = self.children.pop(message["exited"], None)
                if child is not None:
                    child._set_returncode(message["returncode"])
                continue
            if "started" in message:
                child = WarmProcess(message["started"], list(self._spawning))
                self.children[child.pid] = child
                message["process"] = child
            self._replies.put(message)
        self._host_gone()

    def _host_gone(self) -> None:
        """The host exited (or we closed it): its children die with it (PDEATHSIG); make
        sure, wait until they are gone, and report them killed."""
        self.lost.set()
        self._replies.put(None)
        if not self.closing:
            self.process.kill()  # exiting already, or speaking nonsense
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if not self.closing:
            log.warning(
                "the warm engine host (pid %d) exited with %s; the next job starts a new one",
                self.process.pid,
                self.process.returncode,
            )
        for pid, child in list(self.children.items()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, timeout=10)
            child._set_returncode(-signal.SIGKILL)
        self.children.clear()

    def close(self) -> None:
        self.closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader; the host sees EOF
        self.lost.wait(timeout=15)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.sock.close()


class EngineHost:
    """The worker's warm engine host, started on first use (see the module docstring).
    `spawn` is thread-safe and either returns a running WarmProcess or raises
    HostUnavailable (then the caller starts a fresh process).

    Start it from the thread that runs the worker's jobs: PR_SET_PDEATHSIG fires when the
    thread that started a process ends, not the process."""

    def __init__(self, *, ready_timeout_s: float = 300.0, retry_after_s: float = 300.0):
        self.ready_timeout_s = ready_timeout_s
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._host: _HostProcess | None = None
        self._retry_at = 0.0
        self._why_not = ""
        self._closed = False

    @property
    def pid(self) -> int | None:
        host = self._host
        return host.process.pid if host is not None and not host.lost.is_set() else None

    def spawn(self, args: list[str], *, env: dict[str, str], cwd: str, log_file: IO) -> WarmProcess:
        """A training process running `python -m tunefleet.worker.engine ARGS` in `cwd` with
        exactly `env`, its stdout and stderr on `log_file`."""
        with self._lock:
            if self._closed:
                raise HostUnavailable("the worker is stopping")
            host = self._running(env)
            differs = sorted(
                k
                for k in env.keys() | host.env.keys()
                if k not in PER_ATTEMPT_ENV and env.get(k) != host.env.get(k)
            )
            if differs:
                raise HostUnavailable(
                    f"the attempt's environment differs from the warm engine host's in "
                    f"{', '.join(differs[:5])}, which libraries may read at import"
                )
            answer = host.spawn(args, env, cwd, log_file.fileno())
            if answer is not None and "process" in answer:
                return answer["process"]
            why = (answer or {}).get("failed") or "no answer from the warm engine host"
            if answer is None:  # silent or gone: a new host next time
                self._stop_host()
            raise HostUnavailable(why)

    def _running(self, env: dict[str, str]) -> _HostProcess:
        """The running host, started (and waited for) if there is none."""
        if self._host is not None and not self._host.lost.is_set():
            return self._host
        self._host = None
        if time.monotonic() < self._retry_at:
            raise HostUnavailable(self._why_not)
        host_env = {k: v for k, v in env.items() if k not in PER_ATTEMPT_ENV}
        started = time.monotonic()
        try:
            host = _HostProcess(host_env, os.getcwd())
        except OSError as exc:
            raise self._unavailable(f"cannot start the warm engine host: {exc}") from None
        first = host.reply(self.ready_timeout_s)
        if first is None or "ready" not in first:
            host.close()
            why = (first or {}).get("unsafe") or (
                "it exited while importing the engine"
                if host.process.returncode is not None
                else f"not ready within {self.ready_timeout_s:g} s"
            )
            raise self._unavailable(f"the warm engine host cannot serve: {why}")
        log.info(
            "warm engine host ready (pid %d): torch, transformers and accelerate imported "
            "in %.1f s (%.1f s to start)",
            host.process.pid,
            first["ready"]["preload_s"],
            time.monotonic() - started,
        )
        self._host = host
        return host

    def _unavailable(self, why: str) -> HostUnavailable:
        self._why_not = (
            f"{why} (training processes start fresh; retrying in {self.retry_after_s:g} s)"
        )
        self._retry_at = time.monotonic() + self.retry_after_s
        log.warning("%s", self._why_not)
        return HostUnavailable(self._why_not)

    def _stop_host(self) -> None:
        host, self._host = self._host, None
        if host is not None:
            host.close()

    def close(self) -> None:
        """Stops the host (its remaining children die with it); no spawn after this."""
        with self._lock:
            self._closed = True
            self._stop_host()


def single_process_engine_args(command: list[str]) -> list[str] | None:
    """The engine's arguments when `command` is the single-process engine (what a warm
    process can run), else None (accelerate launch, a test's own program...)."""
    if command[:3] == [sys.executable, "-m", ENGINE_MODULE]:
        return command[3:]
    return None


def start_engine_process(
    command: list[str],
    *,
    env: dict[str, str],
    cwd: str | os.PathLike | None,
    log_file: IO,
    host: EngineHost | None,
) -> tuple[TrainingProcess, bool]:
    """Starts `command` with `env` in `cwd` (None: ours), stdout and stderr on `log_file`,
    in a process group of its own that dies with the worker; warm (forked by `host`) when
    it can be, else fresh. Returns the process and whether it is warm. Raises OSError when
    it cannot start at all."""
    args = single_process_engine_args(command)
    if host is not None and args is not None:
        try:
            return host.spawn(args, env=env, cwd=str(cwd or os.getcwd()), log_file=log_file), True
        except HostUnavailable as exc:
            log.info("starting a fresh training process: %s", exc)
    process = subprocess.Popen(
        dies_with_parent(command),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,  # its own process group: one signal reaches all ranks
    )
    return process, False


def _wait_gone(pid: int, timeout: float) -> None:
    """Until `pid` is gone or a zombie (it is not our child: we cannot wait for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(") ", 1)[1][0] == "Z":
                    return
        except (OSError, IndexError):
            return
        time.sleep(0.02)


# Sets PR_SET_PDEATHSIG, then becomes the training process (exec keeps the setting). Not a
# preexec_fn: Python code between fork and exec in a process running gRPC threads can
# abort the child (gRPC's fork handlers), so the child execs this first instead.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
if os.getppid() != int(sys.argv[1]):
    sys.exit(f"the worker (pid {sys.argv[1]}) exited before its training process started")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def dies_with_parent(command: list[str]) -> list[str]:
    """`command`, run so that the kernel SIGKILLs it when the worker dies, kill -9 included.
    An orphaned training process would go on writing checkpoints into the job's shared out
    dir while the next attempt runs there. Linux only; elsewhere `command` as is (the
    worker's own exit paths still kill the process group)."""
    if sys.platform != "linux":
        return command
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def warm_engine_supported() -> bool:
    """The engine host needs Linux (fork, PR_SET_PDEATHSIG, pidfds, SOCK_SEQPACKET)."""
    return sys.platform == "linux"

"""The warm engine host: imports the engine once, then forks one training process per job.

    python -m tunefleet.worker.engine.warm_host --control-fd FD

Why: a training process that starts fresh spends seconds (~10 s on a busy 2-core machine)
importing torch, transformers and accelerate before it reads its spec; for a sweep's trial
that only trains a head on cached features (worker/engine/shared_features.py) that is most
of its wall time. The worker starts this host once (tunefleet.worker.engine_process); for
each single-process attempt the host forks a child that is, from then on, the training
process `python -m tunefleet.worker.engine` would have been, minus the imports.

Fork safety: the host imports but never computes: no torch op runs here, so neither CUDA
nor torch's OpenMP pool is started (a forked child could not use either), and no thread
runs through a fork. `preload` checks these after importing (CUDA not initialised, no GPU
device open, no gRPC, no Python thread, no native thread left running in a test fork) and
the host refuses to serve if any fails; the worker then starts fresh processes. OpenBLAS
(numpy's and scipy's) starts a thread pool at import but stops it before each fork (its
pthread_atfork handler), which the test fork sees.

A child (see `_become_training_process`), before it runs the engine:
- calls setsid(): its own session and process group, so the worker's killpg-based cancel,
  drain and abandon reach it and everything it starts, exactly as for a fresh process;
- sets PR_SET_PDEATHSIG (SIGKILL when the host dies; the host itself dies with the worker,
  started through engine_process.dies_with_parent), so kill -9 of the worker leaves
  no training process behind;
- takes the attempt's engine.log (a file descriptor the worker passes over the control
  socket) as stdout and stderr, /dev/null as stdin, the job's cwd and its whole environment;
- reseeds what a fresh interpreter seeds from the OS (`random`, numpy's global RNG); torch's
  default generator starts from a fixed seed in a fresh process and was never drawn from
  here, so it is left as is. The engine seeds all three explicitly anyway (set_seed).
Then it runs the engine's `__main__` with runpy, as `python -m` does, and exits as a fresh
interpreter would (`run_engine`): same exit codes (0, 2 invalid input, 75 preempted, 1 for a
traceback), atexit handlers run, stdio flushed; only the teardown of every module object,
which nothing observes, is skipped. Signal handlers are
the interpreter's defaults (the host installs none), so the engine's SIGTERM handling is
unchanged. What a fork cannot renew is the interpreter's str hash seed (PYTHONHASHSEED):
the children of one host share it; nothing in the engine depends on it.

Control protocol: one SOCK_SEQPACKET socket (a message per JSON object; the worker's log
file descriptor rides along with a spawn request as SCM_RIGHTS).
  host -> worker   {"ready": {"pid", "preload_s"}} or {"unsafe": "why"}, once, first
  worker -> host   {"spawn": {"args", "env", "cwd"}} + [log fd]
  host -> worker   {"started": pid} or {"failed": "why"}
  host -> worker   {"exited": pid, "returncode": n}   (Popen's convention: -N = signal N)
The worker closing its end tells the host to exit; its children die with it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import gc
import importlib
import json
import os
import random
import runpy
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import NoReturn

from tunefleet.worker.engine.launch import ENGINE_MODULE

# The largest control message (a spawn request carries the job's whole environment).
MAX_MESSAGE_BYTES = 1 << 20
_PR_SET_PDEATHSIG = 1
# How long the host waits for a forked child to report its setup done.
_CHILD_SETUP_TIMEOUT_S = 30.0


def encode(message: dict) -> bytes:
    return json.dumps(message).encode("utf-8")


def decode(data: bytes) -> dict:
    return json.loads(data.decode("utf-8"))


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


# Imported once by the host for every child. First what the engine's __main__ imports (the
# trainer, and through it torch and accelerate), then what a training process imports on
# first use for a Hugging Face text model (seconds more: modeling_utils pulls in
# torch._dynamo and torch.distributed.tensor), including the BERT family's modules (the
# examples' MiniLM, the tests' tiny BERT); another architecture imports its own module in
# the child. Missing optional packages are skipped.
PRELOAD_MODULES = (
    "tunefleet.limits",
    "tunefleet.spec",
    "tunefleet.worker.engine.errors",
    "tunefleet.worker.engine.events",
    "tunefleet.worker.engine.trainer",
    "accelerate.state",
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.tokenization_utils_tokenizers",
    "transformers.models.bert.modeling_bert",
)  # not pandas (0.3 s in each child): with pyarrow it leaves a native thread running
# Then what the first from_pretrained of each child would build and keep in a module global:
# transformers' table of checkpoint key renamings (about 1,200 regular expressions, 0.2 s).
# Pure Python (no torch op), so forking stays safe; skipped where a version lacks it.
WARM_CALLS = (("transformers.conversion_mapping", "get_checkpoint_conversion_mapping", "bert"),)


def preload() -> list[str]:
    """Imports what every training process imports, and says what would make forking
    unsafe (an empty list: safe). Importing is this function's whole purpose, which is why
    the imports are here and not at the top of the module: the worker imports this module
    for its protocol and must not pull torch in."""
    import torch

    for name in PRELOAD_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    for module, function, argument in WARM_CALLS:
        with contextlib.suppress(Exception):  # only ever a missed saving
            getattr(importlib.import_module(module), function)(argument)
    problems = []
    if torch.cuda.is_initialized():
        problems.append("CUDA was initialised while importing the engine")
    devices = [
        target
        for target in (_fd_target(fd) for fd in os.listdir("/proc/self/fd"))
        if target.startswith("/dev/nvidia")
    ]
    if devices:
        problems.append(f"a GPU device is open after importing the engine: {devices[0]}")
    if "grpc" in sys.modules:  # the engine has no use for it, and it forks badly
        problems.append("gRPC was imported with the engine")
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate())
        problems.append(f"Python threads run after importing the engine: {names}")
    survivors = _threads_through_a_fork()
    if survivors:
        problems.append(f"{survivors} native threads keep running through a fork")
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as exc:
        problems.append(f"os.pidfd_open is unavailable (Linux 5.3+ and Python 3.9+): {exc}")
    return problems


def _threads_through_a_fork() -> int:
    """How many threads besides ours still run right after a fork. OpenBLAS (numpy's and
    scipy's copies) starts a pool at import but stops it in its pthread_atfork handler, so
    it is no problem and this says 0; a thread that runs on through the fork (one that may
    hold a lock the child will wait for) counts."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    survivors = _os_threads() - 1
    os.waitpid(pid, 0)
    return survivors


def _fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class Host:
    """The fork server's loop; `serve` returns only in a forked child (with the spawn
    request it is to run) or None when the worker is gone."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.startup_cwd = os.getcwd()

    def send(self, message: dict) -> None:
        self.conn.send(encode(message))

    def serve(self) -> dict | None:
        started = time.monotonic()
        problems = preload()
        if problems:
            self.send({"unsafe": "; ".join(problems)})
            return None
        # The preloaded objects move to the permanent generation: the children's
        # collections never touch (and so never copy) the pages they live on.
        gc.collect()
        gc.freeze()
        self.send({"ready": {"pid": os.getpid(), "preload_s": time.monotonic() - started}})
        try:
            while True:
                readable, _, _ = select.select([self.conn, *self.children], [], [])
                for pidfd in [r for r in readable if r is not self.conn]:
                    self._reap(pidfd)
                if self.conn not in readable:
                    continue
                data, fds, _, _ = socket.recv_fds(self.conn, MAX_MESSAGE_BYTES, 4)
                if not data:
                    return None  # the worker closed its end: we go, our children with us
                spawned = self._spawn(data, fds)
                if spawned is not None:
                    return spawned  # in the child
        except ConnectionError:  # the worker died
            return None

    def _reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        # Popen's returncode convention: -N when signal N ended it.
        self.send({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})

    def _spawn(self, data: bytes, fds: list[int]) -> dict | None:
        """Forks a training process for one spawn request. In the child: returns the request
        (its setup done). In the host: answers started/failed and returns None. An error
        here fails this request, never the host."""
        try:
            request = decode(data)["spawn"]
            if len(fds) != 1:
                raise ValueError(f"a spawn request carries 1 file descriptor, got {len(fds)}")
            ready_r, ready_w = os.pipe()
        except Exception as exc:  # a request we cannot read: refuse it, serve on
            for fd in fds:
                os.close(fd)
            self.send({"failed": f"bad spawn request: {exc}"})
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        host_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(ready_r)
                self._become_training_process(request, fds[0], host_pid)
                os.close(ready_w)  # EOF without a word: set up
                return request
            except BaseException:
                with contextlib.suppress(BaseException):
                    os.write(ready_w, traceback.format_exc().encode("utf-8", "replace"))
                os._exit(127)
        os.close(ready_w)
        os.close(fds[0])
        error = _read_setup_report(ready_r)
        if error:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # a setup that hangs
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.send({"failed": f"the forked training process could not start: {error}"})
            return None
        self.children[os.pidfd_open(pid)] = pid  # a child that already exited is a zombie
        self.send({"started": pid})
        return None

    def _become_training_process(self, request: dict, log_fd: int, host_pid: int) -> None:
        os.setsid()  # before the host says "started": the worker signals the group at once
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != host_pid:  # the host died before the line above took effect
            os._exit(1)
        # The host's descriptors: a child holding the control socket would keep the worker
        # from noticing that the host died.
        self.conn.close()
        for pidfd in self.children:
            os.close(pidfd)
        self.children.clear()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(devnull)
        os.close(log_fd)
        os.chdir(request["cwd"])
        if sys.path and sys.path[0] == self.startup_cwd:  # `python -m` put its cwd there
            sys.path[0] = os.getcwd()
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()  # a fresh interpreter seeds these from the OS
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()


def _read_setup_report(fd: int) -> str:
    """What a forked child wrote before closing its end of the setup pipe: nothing when its
    setup went through."""
    chunks = []
    deadline = time.monotonic() + _CHILD_SETUP_TIMEOUT_S
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                return "its setup did not finish in time"
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks).decode("utf-8", "replace").strip()
            chunks.append(chunk)
    finally:
        os.close(fd)


def run_engine(args: list[str]) -> NoReturn:
    """Runs the engine's __main__ as `python -m tunefleet.worker.engine ARGS` does, and
    exits as that interpreter would: SystemExit's code (None 0, an int as is, anything else
    printed to stderr and 1), an uncaught exception's traceback through sys.excepthook and
    1, an uncaught KeyboardInterrupt as death by SIGINT. Then what CPython's exit does that
    anyone can observe: wait for non-daemon threads, run the atexit handlers (logging's
    flush, weakref finalizers...), flush stdio; but not the teardown of every module and
    object the imports made (seconds of CPU for torch and transformers, the cost this host
    exists to save): the process ends with os._exit. An object still alive at exit is not
    finalized, so a file written without close() would lose what its buffer held; the
    engine closes what it writes (with-blocks, temp file + rename)."""
    sys.argv = ["-m", *args]  # runpy puts the module's file in argv[0]
    interrupted = False
    try:
        runpy.run_module(ENGINE_MODULE, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        code, interrupted = 1, True
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def _exit_code(code: object) -> int:
    """The exit status CPython gives `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tunefleet.worker.engine.warm_host", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--control-fd", type=int, required=True, help="the worker's SOCK_SEQPACKET socket"
    )
    args = parser.parse_args(argv)
    request = Host(socket.socket(fileno=args.control_fd)).serve()
    if request is not None:  # a forked child: the training process from here on
        run_engine(request["args"])


if __name__ == "__main__":
    main()

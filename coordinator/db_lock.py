"""One serving coordinator per database: an advisory lock on a file beside it.

Each coordinator keeps its scheduler's state in memory (leases, long polls, sweep studies,
the sampler process); two on one database would each place the same queued job and ask the
same sweep twice. So a serving coordinator holds an exclusive `flock` on `<db>.lock` for as
long as it serves, and a second one is refused before it opens the database.

Why flock on a file of its own, and not SQLite's locks or a pid file: the kernel drops a
flock when its holder's last descriptor closes, so a coordinator killed with SIGKILL leaves
no stale lock for anyone to clean up, and the database's own locking is left to SQLite. The
file is never deleted (a process waiting on a deleted file's lock would win a lock nobody
else sees); it holds the owner's pid and address, only so the refusal can name them.

JobStore does not take it: benches and tests open stores directly, next to no server.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from pathlib import Path

# A coordinator killed with SIGKILL keeps its lock until the kernel has closed its files,
# a moment after the kill; a restart right after one (a supervisor, the fault tests) waits
# this long for it before refusing.
LOCK_WAIT_S = 5.0
_POLL_S = 0.1


class DatabaseInUse(RuntimeError):
    """Another live coordinator serves this database."""


def lock_path(db_path: str | Path) -> Path:
    """The lock file of the database at `db_path`: beside the file the path leads to, so
    that two paths to one database (a symlink, `./x.db` and `x.db`) share one lock."""
    resolved = Path(db_path).resolve()
    return resolved.with_name(resolved.name + ".lock")


class DatabaseLock:
    """The exclusive claim of one coordinator on one database; `release` (or the process's
    death) gives it up."""

    def __init__(self, fd: int, path: Path):
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def claim(
        cls, db_path: str | Path, address: str, *, wait_s: float = LOCK_WAIT_S
    ) -> DatabaseLock:
        """Takes the lock of the database at `db_path` for a coordinator at `address`,
        waiting up to `wait_s` for a holder that is going away. DatabaseInUse naming the
        holder's pid and address when it stays; OSError when the lock file cannot be made."""
        path = lock_path(db_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    raise DatabaseInUse(
                        f"the database {db_path} is in use by another coordinator "
                        f"({_describe_owner(fd)}); stop it first, or give this one its own --db"
                    )
                time.sleep(_POLL_S)
        except BaseException:
            os.close(fd)
            raise
        lock = cls(fd, path)
        lock.record(address)
        return lock

    def record(self, address: str) -> None:
        """Writes our pid and `address` into the lock file (once the port is bound, the
        address clients reach, rather than port 0)."""
        if self._fd is None:
            return
        owner = json.dumps({"pid": os.getpid(), "address": address}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, owner + b"\n", 0)

    def release(self) -> None:
        """Gives the database up. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale owner for the next reader
        os.close(fd)  # closing the last descriptor drops the flock


def _describe_owner(fd: int) -> str:
    """The holder's pid and address from its lock file ("pid 123, 127.0.0.1:50051"), as far
    as they can be read: the holder may be between truncating and writing it."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid, address = int(owner["pid"]), str(owner["address"])
    except (OSError, ValueError, KeyError, TypeError):
        return "pid and address unknown"
    return f"pid {pid}, {address}"

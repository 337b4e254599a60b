"""Whether this worker can take jobs: its artifacts disk has room.

A worker whose `--artifacts` disk is full used to fail every job it took at once (ENOSPC)
and stay LIVE, eating the queue. Now the first such failure releases the job for another
worker and marks the worker unhealthy: it acquires nothing, says why in every heartbeat
(`ftctl workers` shows UNHEALTHY), and probes the disk until `min_free_bytes` are free and a
test write works again.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from tunefleet.limits import MAX_REASON_CHARS, clip_chars

log = logging.getLogger(__name__)

_PROBE_BYTES = 64 * 1024


class DiskHealth:
    def __init__(self, root: Path, min_free_bytes: int):
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.reason = ""  # why no job can run here now; "" = healthy

    def mark(self, reason: str) -> None:
        reason = clip_chars(reason, MAX_REASON_CHARS)
        if reason and reason != self.reason:
            log.error("unhealthy, taking no jobs: %s", reason)
        self.reason = reason

    def healthy(self) -> bool:
        """True when healthy; while not, probes whether the cause is gone."""
        if self.reason and self._disk_ok():
            log.info("healthy again: %d MB free in %s", self._free() >> 20, self.root)
            self.reason = ""
        return not self.reason

    def _free(self) -> int:
        return shutil.disk_usage(self.root).free

    def _disk_ok(self) -> bool:
        try:
            if self._free() < self.min_free_bytes:
                return False
            probe = self.root / f".probe-{os.getpid()}"
            try:
                with probe.open("wb") as f:
                    f.write(b"\0" * _PROBE_BYTES)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                probe.unlink(missing_ok=True)
        except OSError:
            return False
        return True

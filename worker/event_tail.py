"""The training process's events file (events.jsonl), read as it grows: the worker relays
what the engine appends (`EventTail`), and a new attempt re-reads earlier attempts' whole
files (`read_events`). A line is one JSON job_pb2.Event; a half-written last line (a crashed
writer) and unreadable or oversized lines are skipped, never fatal."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from google.protobuf import json_format

from tunefleet.limits import MAX_EVENT_BYTES, bound_event
from tunefleet.v1 import job_pb2
from tunefleet.worker.engine.events import log_event  # torch-free, as this module

__all__ = ["EventTail", "log_event", "parse_lines", "read_events"]

log = logging.getLogger(__name__)

# An events.jsonl line this long is not parsed at all (the engine bounds its events; a
# longer line comes from something else and would only cost memory).
_MAX_EVENT_LINE_BYTES = 4 * MAX_EVENT_BYTES


class EventTail:
    """Reads the complete lines appended to an events.jsonl file since the last read."""

    def __init__(self, path: Path):
        self.path = path
        # A rerun in the same out dir appends to the old file: start at its current end,
        # on a fresh line (a crashed writer may have left half a line).
        self._offset = 0
        if path.exists():
            with path.open("rb+") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
                self._offset = f.tell()
        self._partial = b""

    def read(self) -> list[job_pb2.Event]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return parse_lines(lines, self.path)


def parse_lines(lines: list[bytes], path: Path) -> list[job_pb2.Event]:
    events = []
    for line in lines:
        if not line.strip():
            continue
        if len(line) > _MAX_EVENT_LINE_BYTES:
            log.warning("skipping a %d-byte line of %s: over the event size limit", len(line), path)
            events.append(
                log_event(f"an event of {len(line):,} bytes was dropped: over the limit", "warning")
            )
            continue
        try:
            events.append(
                bound_event(
                    json_format.Parse(
                        line.decode("utf-8"), job_pb2.Event(), ignore_unknown_fields=True
                    )
                )
            )
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            log.warning("skipping an unreadable line of %s: %s", path, exc)
    return events


def read_events(path: Path) -> list[job_pb2.Event]:
    """Every readable event of a whole events.jsonl file (a crashed writer's half line is
    skipped)."""
    try:
        return parse_lines(path.read_bytes().split(b"\n"), path)
    except OSError:
        return []

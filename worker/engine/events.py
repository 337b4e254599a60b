"""Builders for the `tunefleet.v1.Event`s the engine emits, and a JSON-lines sink.

The engine never sets ``seq``, ``job_id`` or ``attempt``: the coordinator owns those. Each
builder stamps ``time`` so that events keep the moment they happened even when the worker
relays them in batches later.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from google.protobuf import json_format

from tunefleet.limits import bound_event
from tunefleet.v1 import job_pb2


def _stamped() -> job_pb2.Event:
    event = job_pb2.Event()
    event.time.GetCurrentTime()
    return event


def log_event(message: str, level: str = "info") -> job_pb2.Event:
    """A `log` event; level is debug | info | warning | error."""
    event = _stamped()
    event.log.level = level
    event.log.message = message
    return event


def metrics_event(
    phase: str,
    *,
    step: int,
    epoch: float,
    total_steps: int = 0,
    loss: float | None = None,
    lr: float | None = None,
    lr_groups: Mapping[str, float] | None = None,
    samples_per_s: float | None = None,
    values: Mapping[str, float] | None = None,
) -> job_pb2.Event:
    """A `metrics` event for phase "train" or "eval"."""
    event = _stamped()
    m = event.metrics
    m.phase = phase
    m.step = int(step)
    m.epoch = float(epoch)
    m.total_steps = int(total_steps)
    if loss is not None:
        m.loss = float(loss)
    if lr is not None:
        m.lr = float(lr)
    if samples_per_s is not None:
        m.samples_per_s = float(samples_per_s)
    for name, value in (lr_groups or {}).items():
        m.lr_groups[name] = float(value)
    for name, value in (values or {}).items():
        m.values[name] = float(value)
    return event


def report_event(
    name: str, columns: Sequence[str], rows: Sequence[Sequence[object]], text: str = ""
) -> job_pb2.Event:
    """A `report` event: a table plus its pre-rendered text (rendered here when empty)."""
    report = job_pb2.Report(
        name=name, columns=list(columns), text=text or render_table(columns, rows)
    )
    for row in rows:
        report.rows.add(cells=[str(cell) for cell in row])
    return report_message_event(report)


def report_message_event(report: job_pb2.Report) -> job_pb2.Event:
    """Wrap an existing `Report` message (e.g. one built by compression) in an event."""
    event = _stamped()
    event.report.CopyFrom(report)
    return event


def render_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain fixed-width table; numbers right-aligned, text left-aligned."""
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def numeric(text: str) -> bool:
        return text.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()

    def line(row: list[str]) -> str:
        parts = [c.rjust(w) if numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)


def event_to_json(event: job_pb2.Event) -> str:
    """One JSON line, in the encoding INTERFACES.md fixes for events.jsonl."""
    return json_format.MessageToJson(event, indent=None, preserving_proto_field_name=True)


def event_from_json(line: str) -> job_pb2.Event:
    return json_format.Parse(line, job_pb2.Event())


def read_events(path: str | Path) -> list[job_pb2.Event]:
    """All events of an events.jsonl file (blank lines skipped)."""
    text = Path(path).read_text(encoding="utf-8")
    return [event_from_json(line) for line in text.splitlines() if line.strip()]


class JsonlEventSink:
    """Appends events to a JSON-lines file, flushing after each so a tailing worker sees them.

    Callable, so it can be passed directly as the engine's ``emit``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, event: job_pb2.Event) -> None:
        # Bounded here, at the source, whatever built the event: a 70 MB column name echoed
        # in an error must not make a 70 MB event that no one can deliver.
        line = event_to_json(bound_event(event))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                # A full disk: the process is ending, and its exit code says why.
                with contextlib.suppress(OSError):
                    self._file.close()

    def __enter__(self) -> JsonlEventSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""TensorBoard event files from a job's event stream, written by the worker as it relays
the events: `tensorboard --logdir ARTIFACT_ROOT` then shows every job the worker ran.

The engine does not know about TensorBoard: the worker already sees every metrics event on
its way to the coordinator, so it writes them once more here, into OUT_DIR/tensorboard
(beside checkpoints/ and model/). Scalars:

    train/loss, train/accuracy, train/lr, train/samples_per_s, train/epoch   (every log step)
    train/lr/GROUP                                           (when groups' lrs differ)
    eval/loss, eval/accuracy, eval/macro_f1, ...             (phase "eval", each evaluation)
    test/loss, test/accuracy, test/macro_f1                  (phase "test", once, at the end)

Only the `tensorboard` package is needed (the worker extra has it), not torch; without it
the writer does nothing and says so once. A write that fails (a full disk) is logged and
never fails the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tunefleet.v1 import job_pb2

log = logging.getLogger(__name__)

__all__ = ["TENSORBOARD_DIR", "TensorBoardWriter", "scalars"]

TENSORBOARD_DIR = "tensorboard"

ReportFn = Callable[[list[job_pb2.Event]], bool]


def scalars(event: job_pb2.Event) -> Iterator[tuple[str, float]]:
    """(tag, value) pairs of one event; none for events that are not metrics."""
    if event.WhichOneof("kind") != "metrics":
        return
    m = event.metrics
    if m.phase == "train":
        for name in ("loss", "lr", "samples_per_s"):
            if m.HasField(name):
                yield f"train/{name}", getattr(m, name)
        yield "train/epoch", m.epoch
        for name, value in sorted(m.values.items()):  # accuracy, from the training logits
            yield f"train/{name}", value
        if len(set(m.lr_groups.values())) > 1:  # per group only when they differ
            for group, lr in sorted(m.lr_groups.items()):
                yield f"train/lr/{group}", lr
    elif m.phase and not m.phase.startswith("progress/"):  # progress is not a measurement
        for name, value in sorted(m.values.items()):
            yield f"{m.phase}/{name}", value


class TensorBoardWriter:
    """Appends the scalars of job events to a TensorBoard log dir.

    Args:
        log_dir: Where the event file goes; created on the first scalar, so a job that
            never logs a metric leaves no empty folder behind.
        filename_suffix: Appended to the event file's name (e.g. ".attempt-2"), so each
            attempt of a job writes its own file in the same folder.
    """

    def __init__(self, log_dir: Path, *, filename_suffix: str = ""):
        self.log_dir = Path(log_dir)
        self.filename_suffix = filename_suffix
        self._writer = None
        self._disabled = False

    def write(self, events: Iterable[job_pb2.Event]) -> None:
        if self._disabled:
            return
        try:
            self._write(events)
        except Exception as exc:  # TensorBoard is a convenience: never fail a job over it
            log.warning("TensorBoard logging to %s stopped: %s", self.log_dir, exc)
            self._disabled = True

    def tee(self, report: ReportFn) -> ReportFn:
        """`report`, writing each batch of events to TensorBoard first."""

        def report_and_write(events: list[job_pb2.Event]) -> bool:
            self.write(events)
            return report(events)

        return report_and_write

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as exc:
                log.warning("closing TensorBoard log %s: %s", self.log_dir, exc)
            self._writer = None

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, events: Iterable[job_pb2.Event]) -> None:
        records = []
        for event in events:
            values = list(scalars(event))
            if values:
                wall_time = event.time.ToNanoseconds() / 1e9 if event.HasField("time") else None
                records.append((event.metrics.step, wall_time, values))
        if not records:
            return
        writer = self._open()
        if writer is None:
            return
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        for step, wall_time, values in records:
            summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values])
            writer.add_event(Event(wall_time=wall_time or time.time(), step=step, summary=summary))
        writer.flush()

    def _open(self):
        if self._writer is None:
            try:
                from tensorboard.summary.writer.event_file_writer import EventFileWriter
            except ImportError:
                log.info(
                    "tensorboard is not installed: no TensorBoard logs "
                    "(pip install 'tunefleet[worker]' brings it)"
                )
                self._disabled = True
                return None
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = EventFileWriter(
                str(self.log_dir), flush_secs=30, filename_suffix=self.filename_suffix
            )
        return self._writer

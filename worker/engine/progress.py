"""Progress of the engine's long stretches, as lightweight metrics events a follower draws.

A follower's bar must move during everything that takes time, not only between training
logs: building the frozen-feature cache, each evaluation, compression, and the training
steps between two `log_every_steps` logs. `ProgressTracker` reports one such stretch
("stage") as metrics events of phase ``progress/<stage>``:

    phase   progress/training | progress/caching | progress/evaluating | progress/compressing
    values  {"done": d, "total": t}     (training: optimizer steps; caching and evaluating:
                                         examples; compressing: its stages, fractional)
    epoch   where training stands (epochs, as in train metrics)
    step    the optimizer step the run is at (training: the step just done)

Progress is not a measurement: the coordinator stores every progress event as it comes
(a resumed attempt's replayed progress is harmless, unlike a replayed loss), so `step`
keeps its meaning here and an evaluation's progress carries the step it evaluates.

Cheap by design: `update` reads a monotonic clock and returns unless `interval_s` (0.5 s,
so at most ~2 events a second) passed since the stage began or last reported, so calling it
every step or batch costs nothing measurable, and no device value is read to report it (the
loss stays in train metrics, every `log_every_steps`). A stage shorter than `interval_s`
emits nothing; one that reported anything reports its end (done = total) too, so a bar
reaches 100 %.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tunefleet.progress_phases import STAGES, is_progress, phase_of
from tunefleet.worker.engine.events import metrics_event

__all__ = ["STAGES", "ProgressTracker", "is_progress"]

DEFAULT_INTERVAL_S = 0.5


class ProgressTracker:
    """One stage's progress; `update(done)` as it goes, `finish()` at its end.

    Args:
        emit: The run's event sink (the main process's; others pass a no-op).
        stage: One of STAGES.
        total: Units of work of the stage (> 0).
        epoch: Where training stands, in epochs (a float or a callable returning one).
        step: The optimizer step the run is at (an int or a callable returning one);
            None for training, whose `done` is that step.
        interval_s: Least time between two events of this stage.
        clock: Monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        emit: Callable[[Any], None],
        stage: str,
        total: float,
        *,
        epoch: float | Callable[[], float] = 0.0,
        step: int | Callable[[], int] | None = None,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if stage not in STAGES:
            raise ValueError(f"unknown progress stage {stage!r}; expected one of {STAGES}")
        self.emit, self.stage, self.total = emit, stage, float(max(total, 0))
        self.epoch, self.step, self.clock = epoch, step, clock
        self.interval_s = DEFAULT_INTERVAL_S if interval_s is None else interval_s
        self.done = 0.0
        self.base = 0.0  # see mark / within
        self.reported = 0  # events emitted so far
        self._reported_done = -1.0
        self._last = clock()

    def update(self, done: float) -> None:
        """`done` units finished; reports only when `interval_s` passed since the last."""
        self.done = float(done)
        now = self.clock()
        if now - self._last >= self.interval_s:
            self._last = now
            self._report()

    def advance(self, units: float = 1.0) -> None:
        self.update(self.done + units)

    def mark(self, units: float) -> None:
        """`units` whole parts of the stage are done (compression: its measured parts)."""
        self.base = float(units)
        self.update(units)

    def within(self, share: float) -> None:
        """`share` (0..1) of the part after the last `mark` is done."""
        self.update(self.base + min(max(share, 0.0), 1.0))

    def finish(self) -> None:
        """The stage's end: reported if anything of it was, so a bar reaches its total."""
        self.done = self.total
        if self.reported and self._reported_done != self.total:
            self._report()

    def _report(self) -> None:
        epoch = self.epoch() if callable(self.epoch) else self.epoch
        step = self.step() if callable(self.step) else self.step
        self.emit(
            metrics_event(
                phase_of(self.stage),
                step=int(self.done) if step is None else int(step),
                epoch=epoch,
                values={"done": min(self.done, self.total), "total": self.total},
            )
        )
        self.reported += 1
        self._reported_done = min(self.done, self.total)

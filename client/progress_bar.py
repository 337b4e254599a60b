"""The live bar under `ftctl submit --follow` / `ftctl logs -f`: what the job is doing now.

One bar, whose stage follows the job: caching features, training, evaluating, compressing.
Each stage shows its own progress, from the engine's progress events (metrics of phase
``progress/<stage>``, values ``done``/``total``; worker/engine/progress.py) and, for
training, from train metrics too:

    training    ━━━━━━━━━━╺━━━━━━━━━  120/240 steps · epoch 1.00 · loss 0.2345 ·
                lr 8.00e-05 · val macro_f1 0.9812 · 43.1 samples/s · 0:02:09 · ETA 0:01:10

- ETA: remaining steps x the measured time per step, a moving average over the training
  events' own timestamps (evaluations and other stages in between are not counted as step
  time); other stages: their units left at the pace between their first and last report.
- samples/s: the engine's figure, which is the one throughput definition (README,
  "Throughput"): training examples per second of training-step time since training began.
- val <metric>: the job's own selection metric (`eval.metric`) at the last evaluation,
  4 decimals.
- The clock is the job's wall time since it started (its started timestamp, or its RUNNING
  event), not since this follower attached, and it stops when the job ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID
from rich.text import Text

from tunefleet.client.types import Metrics
from tunefleet.progress_phases import stage_of

# The words the bar shows for each of the engine's progress stages (tunefleet.progress_phases).
STAGE_LABELS = {
    "training": ("training", "steps"),
    "caching": ("caching features", "examples"),
    "evaluating": ("evaluating", "examples"),
    "compressing": ("compressing", ""),  # done/total are stages, fractional: shown in %
}
_EMA = 0.3  # weight of the newest step-time measurement
_LABEL_WIDTH, _BAR_WIDTH = 16, 24
# spinner, label, bar and the spaces between the columns
_LEFT_WIDTH = 1 + 1 + _LABEL_WIDTH + 1 + _BAR_WIDTH + 1 + 1


def clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = max(int(round(seconds)), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Column(ProgressColumn):
    """Renders whatever the bar's state says, at every refresh (so the clock ticks)."""

    def __init__(self, render: Callable[[], Text]):
        super().__init__()
        self._render = render

    def render(self, task: Task) -> Text:
        return self._render()


class LiveBar:
    """State and drawing of the bar; `EventRenderer` feeds it events.

    Args:
        console: A terminal console.
        metric: The job's selection metric (eval.metric), shown after "val".
        started: When the job started, if known (else its RUNNING event's time).
        clock: Wall-clock seconds (time.time; tests pass a fake clock).
    """

    def __init__(
        self,
        console: Console,
        *,
        metric: str = "accuracy",
        started: datetime | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.console = console
        self.metric = metric or "accuracy"
        self.clock = clock
        self.started: float | None = started.timestamp() if started else None
        self.ended: float | None = None
        self.stage = "training"
        self.step = 0
        self.total_steps = 0
        self.epoch = 0.0
        self.stage_done = 0.0
        self.stage_total = 0.0
        # (event time, done) of the current stage's first report, and the pace since
        self._stage_anchor: tuple[float, float] | None = None
        self.seconds_per_unit: float | None = None
        self.last_train: Metrics | None = None
        self.last_eval: dict[str, float] = {}
        self.seconds_per_step: float | None = None
        self._anchor: tuple[float, int] | None = None  # (event time, step) of the last train event
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    # ------------------------------------------------------------------ feeding

    def job_started(self, at: float) -> None:
        if self.started is None:
            self.started = at

    def job_ended(self, at: float) -> None:
        self.ended = at

    def metrics(self, m: Metrics, at: float) -> None:
        """A metrics event at event time `at` (seconds)."""
        if self.started is None:  # `ftctl run`: no RUNNING event, the first report starts it
            self.started = at
        stage = stage_of(m.phase)
        if m.phase == "eval":
            self.last_eval = dict(m.values)
            self._anchor = None  # the evaluation's time is not step time
        elif m.phase == "test":
            self._anchor = None
        elif stage is not None and stage != "training":
            done = m.values.get("done", 0.0)
            if stage != self.stage or self._stage_anchor is None or done < self.stage_done:
                self.stage, self._stage_anchor, self.seconds_per_unit = stage, (at, done), None
            elif done > self._stage_anchor[1] and at > self._stage_anchor[0]:
                began, done0 = self._stage_anchor
                self.seconds_per_unit = (at - began) / (done - done0)
            self.stage_done, self.stage_total = done, m.values.get("total", 0.0)
            self._anchor = None
        else:  # train metrics, or training progress
            step = int(m.values.get("done", m.step)) if stage else m.step
            if stage is None:
                self.last_train = m
                self.total_steps = m.total_steps or self.total_steps
            else:
                self.total_steps = int(m.values.get("total", 0)) or self.total_steps
            self._measure(step, at)
            self.stage, self._stage_anchor = "training", None
            self.step = max(self.step, step)
            self.epoch = m.epoch
        self._draw()

    def _measure(self, step: int, at: float) -> None:
        if self.stage != "training":
            self._anchor = None
        if self._anchor is not None and step > self._anchor[1] and at > self._anchor[0]:
            sample = (at - self._anchor[0]) / (step - self._anchor[1])
            old = self.seconds_per_step
            self.seconds_per_step = sample if old is None else _EMA * sample + (1 - _EMA) * old
        if self._anchor is None or step > self._anchor[1]:
            self._anchor = (at, step)

    # ------------------------------------------------------------------ figures

    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else self.clock()) - self.started

    def eta(self) -> float | None:
        """Seconds left in the current stage, from its measured pace."""
        if self.stage == "training":
            if self.seconds_per_step is None or not self.total_steps:
                return None
            return max(self.total_steps - self.step, 0) * self.seconds_per_step
        if self.seconds_per_unit is None:
            return None
        return self.seconds_per_unit * max(self.stage_total - self.stage_done, 0)

    def parts(self) -> list[tuple[int, str]]:
        """(priority, text) of everything right of the bar; 0 is kept longest."""
        parts: list[tuple[int, str]] = []
        unit = STAGE_LABELS.get(self.stage, (self.stage, ""))[1]
        t = self.last_train
        if self.stage == "training":
            if self.total_steps:
                parts.append((0, f"{self.step:,}/{self.total_steps:,} steps"))
            parts.append((5, f"epoch {self.epoch:.2f}"))
            if t is not None and t.loss is not None:
                parts.append((3, f"loss {t.loss:.4f}"))
            if t is not None and t.lr is not None:
                parts.append((6, f"lr {t.lr:.2e}"))
        elif unit:
            parts.append((0, f"{self.stage_done:,.0f}/{self.stage_total:,.0f} {unit}"))
        elif self.stage_total:
            parts.append((0, f"{self.stage_done / self.stage_total:.0%}"))
        if self.metric in self.last_eval:
            parts.append((2, f"val {self.metric} {self.last_eval[self.metric]:.4f}"))
        if self.stage == "training" and t is not None and t.samples_per_s is not None:
            parts.append((4, f"{t.samples_per_s:.1f} samples/s"))
        parts.append((1, clock_text(self.elapsed())))
        eta = self.eta()
        if eta is not None and self.ended is None:
            parts.append((1, f"ETA {clock_text(eta)}"))
        return parts

    def info(self) -> Text:
        """Everything right of the bar, the least wanted parts left out until it fits
        the terminal's width on one line."""
        parts = self.parts()
        room = self.console.width - _LEFT_WIDTH
        while len(parts) > 1 and len(" · ".join(p for _, p in parts)) > room:
            worst = max(range(len(parts)), key=lambda i: (parts[i][0], i))
            del parts[worst]
        return Text(" · ".join(p for _, p in parts), no_wrap=True, overflow="ellipsis")

    def description(self) -> Text:
        return Text(f"{STAGE_LABELS.get(self.stage, (self.stage, ''))[0]:<{_LABEL_WIDTH}}")

    # ------------------------------------------------------------------ drawing

    def _draw(self) -> None:
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                _Column(self.description),
                BarColumn(bar_width=_BAR_WIDTH),
                _Column(self.info),
                console=self.console,
                get_time=self.clock,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=None)
        if self.stage == "training":
            completed, total = self.step, self.total_steps or None
        else:
            completed, total = self.stage_done, self.stage_total or None
        self._progress.update(self._task, completed=completed, total=total)  # type: ignore[arg-type]
        # Now, not at the next auto-refresh: a line printed above the bar in between would
        # otherwise come with the bar as it was before this event.
        self._progress.refresh()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

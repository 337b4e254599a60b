"""The live bar and the closing summary of `ftctl submit --follow`, from recorded events
and a fake clock, on a terminal console.

Fails on the code before: the bar had no ETA, an unlabelled "43/s", the elapsed time of the
follower (not the job), "eval acc" whatever eval.metric said, stood still through caching,
evaluation and compression (it knew only train metrics), showed the last window's
throughput (281/s at the end of a 20.4 samples/s job); the summary was one line of ~40
unsorted keys; and a failure's error was printed three times.
"""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta, timezone

from rich.console import Console

from tunefleet.client import Event, Job, JobState, LogLine, Metrics, StateChange
from tunefleet.client.progress_bar import LiveBar
from tunefleet.client.render import EventRenderer
from tunefleet.v1 import job_pb2

T0 = datetime(2026, 12, 6, 20, 0, tzinfo=timezone.utc)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


def ev(seq: int, payload, at: float) -> Event:
    kind = {StateChange: "state_change", LogLine: "log", Metrics: "metrics"}[type(payload)]
    return Event("job-1", seq, T0 + timedelta(seconds=at), 1, kind, payload)


def progress(stage: str, done: float, total: float, epoch: float = 0.0) -> Metrics:
    return Metrics(f"progress/{stage}", 0, epoch, values={"done": done, "total": total})


def terminal(width: int = 200) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, force_terminal=True, color_system=None), out


def bar_lines(text: str) -> list[str]:
    """Each state the bar was drawn in (rich redraws it with a carriage return / \x1b[2K)."""
    frames = re.split(r"\r|\x1b\[2K|\n", text)
    return [ANSI.sub("", f).strip() for f in frames if "━" in f or "steps" in f]


class Replay:
    """Feeds events at their times, moving the fake clock along."""

    def __init__(self, renderer: EventRenderer, clock: Clock):
        self.renderer, self.clock, self.seq = renderer, clock, 0

    def __call__(self, at: float, payload) -> None:
        self.clock.now = T0.timestamp() + at
        self.seq += 1
        self.renderer.handle(ev(self.seq, payload, at))


def test_bar_stages_eta_wall_time_metric_and_throughput():
    console, out = terminal()
    clock = Clock()
    # The follower attaches 100 s after the job started: the clock counts from the start.
    r = EventRenderer(console, metric="macro_f1", started=T0 - timedelta(seconds=100), clock=clock)
    play = Replay(r, clock)
    play(0.0, progress("caching", 400, 1600))
    play(1.0, progress("caching", 800, 1600))
    text = out.getvalue()
    assert "caching features" in bar_lines(text)[-1] and "800/1,600 examples" in text
    assert "ETA 0:00:02" in bar_lines(text)[-1]  # 400 examples a second, 800 to go

    # Training: step 1 with a loss, then progress every 2 s, one step each 0.5 s.
    play(2.0, Metrics("train", 1, 0.01, 1.3, 1e-5, {}, 12.5, {}, 100))
    for step in range(4, 41, 4):
        play(2.0 + (step - 1) * 0.5, progress("training", step, 100, step / 50))
    last = bar_lines(out.getvalue())[-1]
    assert "40/100 steps" in last and "epoch 0.80" in last and "loss 1.3000" in last
    assert "12.5 samples/s" in last and "ETA 0:00:30" in last  # 60 steps x 0.5 s
    assert "0:02:02" in last  # 100 s before attaching + 21.5 s since

    # An evaluation: its progress, then the job's own metric on the bar, 4 digits.
    play(22.0, progress("evaluating", 200, 400, 0.8))
    assert "evaluating" in bar_lines(out.getvalue())[-1]
    play(23.0, Metrics("eval", 40, 0.8, values={"accuracy": 0.98, "macro_f1": 0.97512}))
    play(60.0, Metrics("train", 100, 2.0, 0.2, 1e-6, {}, 20.4, {}, 100))
    last = bar_lines(out.getvalue())[-1]
    assert "100/100 steps" in last and "val macro_f1 0.9751" in last
    assert "20.4 samples/s" in last and "eval acc" not in last

    play(61.0, progress("compressing", 1.5, 4.0, 2.0))
    play(62.0, progress("compressing", 2.0, 4.0, 2.0))
    last = bar_lines(out.getvalue())[-1]
    assert last.startswith("⠋ compressing") or "compressing" in last
    assert "50%" in last and "ETA 0:00:04" in last  # 0.5 part a second
    play(70.0, StateChange(JobState.SUCCEEDED, "finished"))
    clock.now += 3600  # the clock stops at the end: a late redraw says 0:02:50
    r.close()
    assert "0:02:50" in bar_lines(out.getvalue())[-1]


def test_the_bar_drops_the_least_wanted_parts_to_fit_the_line():
    console, out = terminal(width=80)
    clock = Clock()
    bar = LiveBar(console, metric="accuracy", started=T0, clock=clock)
    bar.last_eval = {"accuracy": 0.9}
    bar.metrics(Metrics("train", 10, 0.2, 0.5, 1e-4, {}, 30.0, {}, 100), T0.timestamp() + 9)
    info = bar.info().plain
    assert "10/100 steps" in info and "0:00:00" in info
    assert "lr" not in info and len(info) <= 80 - 44
    bar.stop()


def failed_job() -> Job:
    msg = job_pb2.Job(id="job-1", state=job_pb2.FAILED, reason="invalid job input: row 3")
    msg.started_at.FromDatetime(T0.replace(tzinfo=None))
    msg.finished_at.FromDatetime((T0 + timedelta(seconds=12)).replace(tzinfo=None))
    return Job.from_proto(msg)


def test_a_failure_is_printed_once():
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    r = EventRenderer(console)
    r.handle(ev(1, LogLine("error", "invalid job input: row 3"), 1))
    r.handle(ev(2, LogLine("error", "invalid job input: row 3; last lines of engine.log:"), 2))
    r.handle(ev(3, LogLine("error", "Traceback (most recent call last):"), 2))
    r.handle(ev(4, LogLine("error", "invalid job input: row 3"), 2))  # the log's last line
    r.handle(ev(5, StateChange(JobState.FAILED, "invalid job input: row 3"), 3))
    r.summary(failed_job())
    text = out.getvalue()
    assert text.count("row 3") == 1, text
    assert text.splitlines() == [
        "[error] invalid job input: row 3",
        "[error] last lines of engine.log:",
        "[error] Traceback (most recent call last):",
        "FAILED",
        "FAILED job job-1 () in 12s",
    ]


def test_a_reason_not_shown_before_is_in_the_summary():
    out = io.StringIO()
    r = EventRenderer(Console(file=out, width=200, force_terminal=False))
    r.summary(failed_job())  # attached after the end: nothing said it yet
    assert "  reason: invalid job input: row 3" in out.getvalue().splitlines()


def test_plain_progress_lines_are_throttled():
    out = io.StringIO()
    r = EventRenderer(Console(file=out, width=200, force_terminal=False), throttle_s=10)
    for i in range(1, 31):  # a report a second, 30 s of caching
        r.handle(ev(i, progress("caching", i * 100, 3000), i))
    r.handle(ev(40, progress("training", 5, 100), 31))  # train lines cover training
    lines = out.getvalue().splitlines()
    assert lines == [
        "caching features 100/3,000 examples (3%)",
        "caching features 1,100/3,000 examples (37%)",
        "caching features 2,100/3,000 examples (70%)",
        "caching features 3,000/3,000 examples (100%)",
    ]

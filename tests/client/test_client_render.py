"""What `submit --follow`, `logs -f` and `run` print, with and without a terminal."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

from rich.console import Console

from tunefleet.client import Event, Job, JobState, LogLine, Metrics, Report, StateChange
from tunefleet.client.render import EventRenderer, format_duration, format_metrics
from tunefleet.limits import MAX_REASON_CHARS, clip_chars
from tunefleet.v1 import job_pb2

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def ev(seq: int, payload, *, at: float = 0.0, attempt: int = 1) -> Event:
    kind = {StateChange: "state_change", LogLine: "log", Metrics: "metrics", Report: "report"}
    return Event("job-1", seq, T0 + timedelta(seconds=at), attempt, kind[type(payload)], payload)


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, force_terminal=False), out


def train(step: int, total: int = 100) -> Metrics:
    return Metrics("train", step, step / 50, loss=1.0 / step, lr=1e-4, total_steps=total)


def test_plain_lines_for_every_kind_of_event():
    console, out = plain_console()
    with EventRenderer(console) as r:
        r.handle(ev(1, StateChange(JobState.QUEUED, "submitted")))
        r.handle(ev(2, StateChange(JobState.RUNNING, "training started on worker w-1"), attempt=2))
        r.handle(
            ev(3, Report("freeze_plan", ("block",), (("head",),), "block  trainable\nhead   yes"))
        )
        r.handle(ev(4, LogLine("warning", "slow [data] loader")))  # brackets are not markup
        r.handle(ev(5, LogLine("debug", "hidden by default")))
        r.handle(ev(6, Metrics("eval", 50, 1.0, values={"loss": 0.3, "accuracy": 0.875})))
    lines = out.getvalue().splitlines()
    assert lines == [
        "QUEUED submitted",
        "RUNNING training started on worker w-1 (attempt 2)",
        "block  trainable",
        "head   yes",
        "[warning] slow [data] loader",
        "eval  step 50 epoch 1.00 accuracy 0.875 loss 0.3",
    ]


def test_a_long_error_is_printed_once_though_the_failed_reason_was_clipped():
    """The worker (500 characters) and the coordinator (MAX_REASON_CHARS) clip a job's
    reason and end it with "... (truncated, N chars)": the FAILED line no longer matched
    the error line above and repeated hundreds of characters of it."""
    error = "invalid job input: model.name: the hub could not be reached; " + "x" * 1500
    console, out = plain_console()
    with EventRenderer(console) as r:
        r.handle(ev(1, LogLine("error", error)))
        r.handle(ev(2, StateChange(JobState.FAILED, clip_chars(error, MAX_REASON_CHARS))))
    assert out.getvalue().splitlines() == [f"[error] {error}", "FAILED"]


def test_train_metrics_are_throttled_by_event_time_but_the_last_one_shows():
    console, out = plain_console()
    r = EventRenderer(console, throttle_s=10.0)
    for i, step in enumerate(range(1, 31)):
        r.handle(ev(i + 1, train(step), at=i))  # one per second
    r.handle(ev(40, StateChange(JobState.SUCCEEDED, "done"), at=31))
    r.close()
    steps = [line.split()[2] for line in out.getvalue().splitlines() if line.startswith("train")]
    # t=0, 10, 20 pass the throttle; step 30 is flushed before the state change.
    assert steps == ["1/100", "11/100", "21/100", "30/100"]
    assert out.getvalue().splitlines()[-1] == "SUCCEEDED done"


def test_zero_throttle_prints_every_metrics_event():
    console, out = plain_console()
    with EventRenderer(console, throttle_s=0.0) as r:
        for step in range(1, 6):
            r.handle(ev(step, train(step), at=0))
    assert sum(line.startswith("train") for line in out.getvalue().splitlines()) == 5


def test_format_metrics():
    m = Metrics("train", 20, 0.4, 0.69314, 4e-05, {}, 18.25, {}, 100)
    assert (
        format_metrics(m) == "train step 20/100 epoch 0.40 loss 0.6931 lr 4.00e-05 18.2 samples/s"
    )
    assert format_duration(59) == "59s" and format_duration(83) == "1m23s"
    assert format_duration(7260) == "2h01m"


def test_live_bar_on_a_terminal_and_the_summary():
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    r = EventRenderer(console)
    assert r.live
    r.handle(ev(1, StateChange(JobState.RUNNING, "training started on worker w-1")))
    r.handle(ev(2, train(10)))
    r.handle(ev(3, Metrics("eval", 10, 0.2, values={"accuracy": 0.9})))
    r.handle(ev(4, train(20)))
    r.summary(
        Job.from_proto(
            job_pb2.Job(
                id="job-1",
                state=job_pb2.SUCCEEDED,
                reason="finished",
                artifacts={"model": "/runs/job-1/model"},
                summary={"eval_accuracy": 0.9, "best_step": 10.0},
            )
        )
    )
    text = out.getvalue()
    assert "RUNNING training started on worker w-1" in text
    assert "20/100 steps" in text and "val accuracy 0.9000" in text  # the bar
    assert "SUCCEEDED job job-1" in text and "/runs/job-1/model" in text
    assert "validation  accuracy 0.9000" in text


def test_get_shows_the_members_of_a_multi_node_job():
    from tunefleet.client.render import render_job

    msg = job_pb2.Job(id="job-1", state=job_pb2.RUNNING, worker_id="w-a", rendezvous="10.0.0.1:7")
    msg.spec.resources.nodes = 2
    msg.members.add(rank=0, worker_id="w-a", address="10.0.0.1", state=job_pb2.RUNNING)
    msg.members.add(
        rank=1, worker_id="w-b", address="10.0.0.2", state=job_pb2.CANCELLED, reason="stopped"
    )
    console, out = plain_console()
    render_job(console, Job.from_proto(msg))
    text = out.getvalue()
    assert "rendezvous  10.0.0.1:7" in text
    assert "rank 0      w-a (10.0.0.1)  RUNNING" in text
    assert "rank 1      w-b (10.0.0.2)  CANCELLED  stopped" in text


def test_get_shows_crash_restarts_and_the_retry_backoff():
    from tunefleet.client.render import render_job

    msg = job_pb2.Job(id="job-1", state=job_pb2.QUEUED, attempt=2, restarts=1)
    msg.spec.train.max_restarts = 3
    msg.not_before.FromSeconds(2_000_000_000)
    console, out = plain_console()
    job = Job.from_proto(msg)
    render_job(console, job)
    text = out.getvalue()
    assert "restarts" in text and "1 of 3 (training process crashed)" in text
    assert "retry after" in text and job.not_before.year == 2033

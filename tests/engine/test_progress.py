"""Progress events: the engine reports caching features, training, evaluating and
compressing as they go (metrics of phase progress/<stage>, values done/total), throttled by
time so that they never flood the event log, and the plot's lr curve starts at step 1.

Fails on the code before: there were no progress events, so a follower's bar stood still
through the feature cache, every evaluation and compression, and moved only every
`log_every_steps`; and the first train metrics came at step `log_every_steps`, so warmup
was not on the lr curve.
"""

from __future__ import annotations

import pytest

from tunefleet.worker.engine import progress, run_job
from tunefleet.worker.engine.progress import ProgressTracker, is_progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tracker_reports_at_most_every_interval_and_its_end():
    clock, emitted = FakeClock(), []
    tracker = ProgressTracker(emitted.append, "caching", 1000, epoch=0.5, clock=clock)
    for done in range(1, 301):  # 300 batches over 3 s of fake time: a report each 0.5 s
        clock.now += 0.01
        tracker.update(done)
    tracker.finish()
    phases = {e.metrics.phase for e in emitted}
    assert phases == {"progress/caching"}
    assert 6 <= len(emitted) <= 7  # 3 s / 0.5 s, + the end
    last = emitted[-1].metrics
    assert last.values["done"] == last.values["total"] == 1000 and last.epoch == 0.5
    # no step given: the step is the stage's done (training's way)
    assert [e.metrics.step for e in emitted] == [int(e.metrics.values["done"]) for e in emitted]


def test_a_short_stage_reports_nothing():
    clock, emitted = FakeClock(), []
    tracker = ProgressTracker(emitted.append, "evaluating", 10, clock=clock)
    for done in range(10):
        clock.now += 0.01
        tracker.update(done)
    tracker.finish()
    assert emitted == []


def test_tracker_rejects_an_unknown_stage():
    with pytest.raises(ValueError, match="unknown progress stage"):
        ProgressTracker(lambda e: None, "warming up", 1)


@pytest.fixture
def every_progress(monkeypatch):
    """No throttle: every update of every stage becomes an event."""
    monkeypatch.setattr(progress, "DEFAULT_INTERVAL_S", 0.0)


def _progress(events, stage):
    return [e.metrics for e in events.kind("metrics") if e.metrics.phase == f"progress/{stage}"]


def test_a_job_reports_progress_of_every_stage(
    tmp_path, bert_dir, text_csvs, text_spec, events, every_progress
):
    spec = text_spec(
        bert_dir,
        text_csvs,
        finetune={"strategy": "head_only"},  # a frozen body: the feature cache
        train={"epochs": 2, "log_every_steps": 4},
        compression={"prune": {"amount": 0.3}, "quantize": {"method": "dynamic_int8"}},
    )
    run_job(spec, tmp_path, events)
    assert any("feature cache: ran the frozen prefix" in m for m in events.logs())

    caching = _progress(events, "caching")
    assert caching and caching[-1].values["done"] == caching[-1].values["total"]
    assert {m.values["total"] for m in caching} == {24, 12}  # train, then eval examples

    training = _progress(events, "training")
    assert [m.values["done"] for m in training] == list(range(1, 13))  # every step: 12
    assert {m.values["total"] for m in training} == {12}

    evaluating = _progress(events, "evaluating")
    assert evaluating and {m.values["total"] for m in evaluating} == {12}

    compressing = _progress(events, "compressing")
    assert compressing[-1].values["done"] == compressing[-1].values["total"] == 4
    dones = [m.values["done"] for m in compressing]
    assert dones == sorted(dones) and len(dones) > 4  # evaluations report within their part

    # step is the optimizer step the run is at: training's is its done; caching runs before
    # step 1; compressing happens after the last step.
    assert all(m.step == int(m.values["done"]) for m in training)
    assert {m.step for m in _progress(events, "caching")} <= {0}
    assert {m.step for m in compressing} == {12}

    # Train metrics stay every log_every_steps, plus step 1 (the lr curve starts there).
    train = [e.metrics for e in events.kind("metrics") if e.metrics.phase == "train"]
    assert [m.step for m in train] == [1, 4, 8, 12]
    assert train[0].lr is not None and train[0].loss is not None


def test_progress_is_throttled_in_a_real_run(tmp_path, bert_dir, text_csvs, text_spec, events):
    """With the default 0.5 s, a tiny job's stages are too short to report at all."""
    spec = text_spec(bert_dir, text_csvs, train={"epochs": 2})
    run_job(spec, tmp_path, events)
    times = [
        e.time.ToMilliseconds() for e in events.kind("metrics") if is_progress(e.metrics.phase)
    ]
    seconds = (times[-1] - times[0]) / 1000 if times else 0.0
    assert len(times) <= 2 * seconds + 4 * 2  # ~2 a second, + each stage's end


def test_progress_is_not_a_tensorboard_scalar():
    from tunefleet.worker.tensorboard_writer import scalars

    emitted = []
    tracker = ProgressTracker(emitted.append, "evaluating", 10, interval_s=0.0)
    tracker.update(5)
    assert len(emitted) == 1 and list(scalars(emitted[0])) == []

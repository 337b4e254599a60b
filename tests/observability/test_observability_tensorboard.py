"""TensorBoard event files written by the worker from the engine's event stream, read
back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tunefleet.v1 import job_pb2
from tunefleet.worker.tensorboard_writer import TensorBoardWriter


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {
        tag: [(s.step, s.value) for s in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def _train(step: int, loss: float, lr: float, groups: dict | None = None) -> job_pb2.Event:
    event = job_pb2.Event(
        metrics=job_pb2.Metrics(
            phase="train", step=step, epoch=step / 4, loss=loss, lr=lr, lr_groups=groups or {}
        )
    )
    event.time.FromSeconds(1_700_000_000 + step)
    return event


def test_writer_maps_metrics_to_scalars(tmp_path):
    log_dir = tmp_path / "tensorboard"
    reported = []
    with TensorBoardWriter(log_dir, filename_suffix=".attempt-1") as writer:
        report = writer.tee(lambda events: reported.append(len(events)) or True)
        assert report([job_pb2.Event(log=job_pb2.LogLine(message="started"))])
        assert not log_dir.exists(), "no metrics yet: no folder"
        report(
            [
                _train(2, 0.75, 1e-3, {"head": 1e-3, "backbone": 1e-4}),
                _train(4, 0.5, 5e-4, {"head": 5e-4, "backbone": 5e-5}),
                job_pb2.Event(
                    metrics=job_pb2.Metrics(
                        phase="eval", step=4, epoch=1.0, values={"accuracy": 0.875, "loss": 0.4}
                    )
                ),
            ]
        )
    assert reported == [1, 3]
    assert [p.name.endswith(".attempt-1") for p in log_dir.iterdir()] == [True]
    scalars = _scalars(log_dir)
    assert scalars["train/loss"] == [(2, 0.75), (4, 0.5)]
    assert scalars["train/lr"] == [(2, pytest.approx(1e-3)), (4, pytest.approx(5e-4))]
    assert scalars["train/lr/backbone"] == [(2, pytest.approx(1e-4)), (4, pytest.approx(5e-5))]
    assert scalars["train/epoch"] == [(2, 0.5), (4, 1.0)]
    assert scalars["eval/accuracy"] == [(4, 0.875)]
    assert scalars["eval/loss"] == [(4, pytest.approx(0.4))]


def test_a_broken_log_dir_never_fails_the_job(tmp_path, caplog):
    blocker = tmp_path / "tensorboard"
    blocker.write_text("a file where the folder should be")
    writer = TensorBoardWriter(blocker)
    report = writer.tee(lambda events: True)
    assert report([_train(1, 1.0, 0.1)]) is True
    assert report([_train(2, 0.9, 0.1)]) is True
    writer.close()
    assert "TensorBoard logging to" in caplog.text


def test_real_job_writes_its_curves(trained_job):
    """The worker wrote OUT_DIR/tensorboard while relaying; it matches the stored events."""
    train = [e.metrics for e in trained_job.events if e.metrics and e.metrics.phase == "train"]
    evals = [e.metrics for e in trained_job.events if e.metrics and e.metrics.phase == "eval"]
    assert train and len(evals) == 2

    scalars = _scalars(trained_job.out_dir / "tensorboard")
    assert scalars["train/loss"] == [(m.step, pytest.approx(m.loss, rel=1e-6)) for m in train]
    assert scalars["train/lr"] == [(m.step, pytest.approx(m.lr, rel=1e-6)) for m in train]
    assert scalars["eval/accuracy"] == [
        (m.step, pytest.approx(m.values["accuracy"], rel=1e-6)) for m in evals
    ]
    assert {"eval/loss", "eval/macro_f1", "train/samples_per_s"} <= set(scalars)
    # `tensorboard --logdir ARTIFACT_ROOT` finds the run under the job's id.
    accumulator = EventAccumulator(str(trained_job.out_dir.parent))
    assert accumulator.Reload() is not None

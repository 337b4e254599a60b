"""`ftctl plot` draws what happened without exaggerating it: the lr curve from step 1
(warmup visible), epoch boundaries, an accuracy axis of at least 20 points, and the best
evaluation's label away from the markers.

Fails on the code before: no epoch lines, matplotlib's autoscale zoomed two evaluations
0.017 apart to fill the panel, and the label sat 14 points under the best marker, on the
line into the next one."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tunefleet.client.plot import build_figure, collect_curves, epoch_boundaries, share_limits
from tunefleet.client.types import Event, Metrics

pytest.importorskip("matplotlib")


def _event(seq: int, m: Metrics) -> Event:
    return Event("job-1", seq, datetime.now(timezone.utc), 1, "metrics", m)


def job_events(steps_per_epoch: int = 50, epochs: int = 2) -> list[Event]:
    """Train metrics at step 1 and every 10 steps (warmup over the first 6), an eval at
    every epoch's end: accuracy 0.975 then 0.992."""
    total = steps_per_epoch * epochs
    events, seq = [], 0
    for step in [1, *range(10, total + 1, 10)]:
        lr = 1e-4 * min(step / 6, 1.0) * (1 - step / (total + 1))
        seq += 1
        events.append(_event(seq, Metrics("train", step, step / steps_per_epoch, 1 / step, lr)))
        if step % steps_per_epoch == 0:
            acc = {1: 0.975, 2: 0.992}[step // steps_per_epoch]
            seq += 1
            values = {"accuracy": acc, "macro_f1": acc - 0.001, "loss": 0.2}
            events.append(_event(seq, Metrics("eval", step, step / steps_per_epoch, values=values)))
    return events


def test_lr_starts_at_step_one_and_epochs_are_marked():
    curves = collect_curves(job_events())
    assert curves.lr["lr"][0][0] == 1  # warmup is on the curve
    assert curves.steps_per_epoch == pytest.approx(50)
    assert epoch_boundaries(curves) == [50.0]  # the run ends at step 100: no line there
    figure = build_figure(curves)
    for ax in figure.axes:
        lines = [line for line in ax.get_lines() if line.get_gid() == "epoch-boundary"]
        assert [line.get_xdata()[0] for line in lines] == [50.0]
    lr_ax = figure.axes[2]
    assert min(lr_ax.get_lines()[0].get_xdata()) == 1


def test_accuracy_axis_does_not_exaggerate_a_small_change():
    figure = build_figure(collect_curves(job_events()))
    eval_ax = figure.axes[1]
    low, high = eval_ax.get_ylim()
    assert high - low >= 0.2 - 1e-9 and low >= 0 and high <= 1.02
    # The 1.7-point gain takes under a tenth of the panel's height.
    assert (0.992 - 0.975) / (high - low) < 0.1


def test_best_label_is_in_a_corner_clear_of_the_markers():
    figure = build_figure(collect_curves(job_events()))
    eval_ax = figure.axes[1]
    (label,) = [t for t in eval_ax.texts if t.get_text().startswith("best ")]
    assert label.get_text() == "best accuracy 0.9920 @ step 100"
    assert label.get_transform() == eval_ax.transAxes  # axes coordinates, not data
    x, y = label.get_position()
    assert x > 0.9 and y < 0.1
    # and the markers sit well above it: every eval point is in the upper part
    low, high = eval_ax.get_ylim()
    assert all((v - low) / (high - low) > 0.3 for v in (0.975, 0.992))


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.975, 0.992], (0.82, 1.02)), ([0.02, 0.05], (0.0, 0.2)), ([0.2, 0.9], (0.13, 0.97))],
)
def test_share_limits(values, expected):
    assert share_limits(values) == pytest.approx(expected, abs=1e-3)

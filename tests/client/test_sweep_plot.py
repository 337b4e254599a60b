"""`ftctl plot SWEEP`: every trial's validation curve on one axis, the best one thick and
starred at its best evaluation, and the trials' values against each swept field."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tunefleet.client.errors import TunefleetError
from tunefleet.client.sweep_plot import build_sweep_figure, trial_curves
from tunefleet.client.sweeps import Sweep, SweepState, Trial
from tunefleet.client.types import Event, Metrics
from tunefleet.v1 import spec_pb2

pytest.importorskip("matplotlib")


def make_sweep(trials: list[Trial], best: int | None, mode: str = "max") -> Sweep:
    spec = spec_pb2.JobSpec(name="lr-sweep")
    spec.sweep.metric, spec.sweep.mode = "accuracy", mode
    value = next((t.value for t in trials if t.number == best), None)
    return Sweep("sweep-1", "lr-sweep", SweepState.SUCCEEDED, "", tuple(trials), best,
                 f"job-{best}", value, {}, None, None, "", 0, spec)  # fmt: skip


def trial(n: int, lr: str, strategy: str, value: float | None, state="COMPLETE") -> Trial:
    params = {"optimizer.lr": lr, "finetune.strategy": strategy}
    return Trial(n, f"job-{n}", None, state, params, value)


CURVES = {
    0: [(50, 0.60), (100, 0.70)],
    1: [(50, 0.80), (100, 0.92)],  # the best: 0.92 at step 100
    2: [(50, 0.50)],  # pruned after one evaluation
}


def sweep_of_three() -> Sweep:
    return make_sweep(
        [
            trial(0, "0.0001", "full", 0.70),
            trial(1, "0.003", "head_only", 0.92),
            trial(2, "0.03", "last_k", 0.50, state="PRUNED"),
        ],
        best=1,
    )


def test_curves_overlaid_best_thick_and_starred():
    figure = build_sweep_figure(sweep_of_three(), CURVES)
    curve_ax = figure.axes[0]
    lines = {line.get_gid(): line for line in curve_ax.get_lines()}
    assert {"trial-0", "trial-1", "trial-2", "best"} <= set(lines)
    assert lines["trial-1"].get_linewidth() > lines["trial-0"].get_linewidth()
    assert lines["trial-2"].get_linestyle() == "--"  # pruned: not read as finished
    assert (lines["best"].get_xdata()[0], lines["best"].get_ydata()[0]) == (100, 0.92)
    assert "t1 (strategy=head_only, lr=0.003) best" in curve_ax.get_legend_handles_labels()[1]
    assert any("best: t1, accuracy 0.9200" in t.get_text() for t in curve_ax.texts)
    low, high = curve_ax.get_ylim()
    assert low <= 0.5 and high >= 0.92


def test_one_panel_per_swept_field_with_the_best_marked():
    figure = build_sweep_figure(sweep_of_three(), CURVES)
    assert len(figure.axes) == 3  # curves, finetune.strategy, optimizer.lr
    strategy_ax, lr_ax = figure.axes[1], figure.axes[2]
    assert strategy_ax.get_xlabel() == "finetune.strategy"
    assert [t.get_text() for t in strategy_ax.get_xticklabels()] == [
        "full", "head_only", "last_k",
    ]  # fmt: skip
    assert lr_ax.get_xlabel() == "optimizer.lr" and lr_ax.get_xscale() == "log"  # 300x span
    points = next(c for c in lr_ax.collections if c.get_gid() == "trials").get_offsets()
    assert sorted(map(tuple, points.tolist())) == [(0.0001, 0.7), (0.003, 0.92), (0.03, 0.5)]
    star = next(line for line in lr_ax.get_lines() if line.get_gid() == "best")
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (0.003, 0.92)


def test_min_mode_stars_the_lowest_point():
    sweep = make_sweep([trial(0, "0.1", "full", 0.3), trial(1, "0.2", "full", 0.2)], best=1,
                       mode="min")  # fmt: skip
    figure = build_sweep_figure(sweep, {0: [(1, 0.5), (2, 0.3)], 1: [(1, 0.4), (2, 0.2)]})
    star = next(line for line in figure.axes[0].get_lines() if line.get_gid() == "best")
    assert star.get_ydata()[0] == 0.2


def test_curves_come_from_the_trials_events_else_the_sweeps_record():
    class FakeClient:
        def events(self, job_id, after, follow):
            if job_id != "job-0":
                return []
            m = Metrics("eval", 10, 1.0, values={"accuracy": 0.8})
            return [Event(job_id, 1, datetime.now(timezone.utc), 1, "metrics", m)]

    t0 = trial(0, "0.1", "full", 0.8)
    t1 = Trial(1, "job-1", None, "COMPLETE", {"optimizer.lr": "0.2"}, 0.7, {5: 0.6, 10: 0.7})
    curves = trial_curves(FakeClient(), make_sweep([t0, t1], best=0))
    assert curves == {0: [(10, 0.8)], 1: [(5, 0.6), (10, 0.7)]}


def test_a_sweep_with_nothing_evaluated_says_so():
    sweep = make_sweep([trial(0, "0.1", "full", None, state="RUNNING")], best=None)
    with pytest.raises(TunefleetError, match="no trial of sweep-1 has evaluated yet"):
        build_sweep_figure(sweep, {0: []})


def test_a_field_every_trial_shares_gets_no_panel():
    sweep = make_sweep([trial(0, "0.1", "full", 0.3), trial(1, "0.2", "full", 0.4)], best=1)
    figure = build_sweep_figure(sweep, {0: [(1, 0.3)], 1: [(1, 0.4)]})
    assert [ax.get_xlabel() for ax in figure.axes[1:]] == ["optimizer.lr"]

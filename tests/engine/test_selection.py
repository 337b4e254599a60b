"""Which evaluated step is exported (selection.py): a saturated metric must not export the
least-trained model. Before this, with macro_f1 = 1.0 at every evaluation, the first one won
(step 10, eval loss 0.587) over step 60 (eval loss 0.013)."""

from __future__ import annotations

import json

from tunefleet.worker.engine import selection
from tunefleet.worker.engine.trainer import TrainerState, run_job


def feed(name: str, evals: list[tuple[int, float, float]], metric_key: str = "macro_f1"):
    """Run a scripted sequence of (step, metric, loss) evaluations; returns the state and
    which ones were reported as a new best."""
    state = TrainerState()
    bests = []
    for step, value, loss in evals:
        metrics = {"loss": loss, "accuracy": value, "macro_f1": value}
        if selection.track(state, name, step, metrics):
            bests.append(step)
    return state, bests


def test_a_saturated_metric_breaks_ties_toward_the_lower_eval_loss():
    evals = [(10, 1.0, 0.587), (20, 1.0, 0.2), (30, 1.0, 0.05), (40, 1.0, 0.09), (60, 1.0, 0.013)]
    state, bests = feed("macro_f1", evals)
    assert state.best_step == 60 and bests == [10, 20, 30, 60]
    assert sorted(state.best_tied_steps) == [10, 20, 30, 40]
    assert selection.reason(state, "macro_f1") == (
        "macro_f1 1.0000 (tied with steps 10, 20, 30, 40; lowest eval loss 0.0130)"
    )


def test_a_tie_that_loses_on_the_loss_keeps_the_earlier_step_and_counts_for_patience():
    state, bests = feed("accuracy", [(10, 0.9, 0.1), (20, 0.9, 0.3)])
    assert state.best_step == 10 and bests == [10]
    assert state.evals_since_best == 1 and state.best_tied_steps == [20]
    assert "tied with step 20; lowest eval loss 0.1000" in selection.reason(state, "accuracy")


def test_a_tie_of_metric_and_loss_goes_to_the_later_step_but_is_no_improvement():
    state, _ = feed("accuracy", [(10, 0.9, 0.1), (20, 0.9, 0.1), (30, 0.9, 0.1)])
    assert state.best_step == 30 and state.best_tied_steps == [10, 20]
    assert state.evals_since_best == 2  # early stopping still sees a run that stopped learning
    state, _ = feed("loss", [(10, 0.0, 0.1), (20, 0.0, 0.1)])
    assert state.best_step == 20 and state.evals_since_best == 1


def test_a_strictly_better_metric_wins_whatever_its_loss_and_clears_the_ties():
    state, _ = feed("macro_f1", [(10, 0.9, 0.1), (20, 0.9, 0.05), (30, 0.95, 0.4)])
    assert state.best_step == 30 and state.best_tied_steps == []
    assert selection.reason(state, "macro_f1") == "best macro_f1 0.9500"
    state, _ = feed("macro_f1", [(10, 0.95, 0.4), (20, 0.9, 0.01)])
    assert state.best_step == 10 and state.evals_since_best == 1


def test_float_noise_in_a_ratio_is_a_tie_but_a_real_difference_is_not():
    noisy = 2 / 3
    state, _ = feed("macro_f1", [(10, noisy, 0.5), (20, noisy * (1 + 1e-15), 0.2)])
    assert state.best_step == 20 and state.best_tied_steps == [10]  # a tie, won on the loss
    state, _ = feed("macro_f1", [(10, 0.5001, 0.5), (20, 0.5, 0.2)])  # 1 in 10,000: real
    assert state.best_step == 10 and state.best_tied_steps == []


def test_with_the_loss_as_the_metric_lower_wins_and_exact_ties_go_to_the_later_step():
    state, bests = feed("loss", [(10, 0.0, 0.5), (20, 0.0, 0.4), (30, 0.0, 0.4), (40, 0.0, 0.45)])
    assert state.best_step == 30 and bests == [10, 20, 30]
    assert selection.reason(state, "loss") == "loss 0.4000 (tied with step 20; the later step)"
    state, _ = feed("loss", [(10, 0.0, 0.4), (20, 0.0, 0.4 + 1e-15)])  # not a tie: a worse loss
    assert state.best_step == 10


def test_a_non_finite_evaluation_never_becomes_the_best():
    state, bests = feed("accuracy", [(10, 0.5, 0.7), (20, 0.9, float("nan"))])
    assert state.best_step == 10 and bests == [10] and state.evals_since_best == 1


def test_old_checkpoints_without_tie_records_still_resume():
    """TrainerState is restored with TrainerState(**trainer_state.json); older files lack
    best_tied_steps, so it must have a default."""
    old = {"global_step": 5, "best_value": 0.5, "best_step": 5, "best_metrics": {"loss": 1.0}}
    assert TrainerState(**old).best_tied_steps == []


def test_an_engine_run_whose_metric_saturates_exports_the_lowest_loss_step(
    bert_dir, text_csvs, text_spec, events, tmp_path
):
    """End to end on the tiny separable task: accuracy saturates while the eval loss keeps
    changing; the exported step is the lowest-loss one among the tied, and
    the summary and result.json say which and why."""
    spec = text_spec(
        bert_dir,
        text_csvs,
        train={"epochs": 6, "batch_size": 4, "seed": 0},
        optimizer={"name": "adamw", "lr": 1e-2},
        schedule={"name": "constant"},
        eval={"metric": "accuracy", "every_steps": 6},
        # This seed's length-grouped order gives a trajectory whose lowest-loss tied step is
        # not the first tied one (else first-wins would pass too, see below).
        data={"group_by_length": True},
    )
    result = run_job(spec, tmp_path, events)
    evals = [
        (e.metrics.step, e.metrics.values["accuracy"], e.metrics.values["loss"])
        for e in events.kind("metrics")
        if e.metrics.phase == "eval"
    ]
    top = max(v for _, v, _ in evals)
    tied = [(loss, -step, step) for step, v, loss in evals if v == top]
    assert len(tied) >= 2, f"the metric did not saturate: {evals}"
    expected = min(tied)[2]  # lowest loss, then the later step
    assert expected != min(s for s, v, _ in evals if v == top), "first-wins would pass too"
    assert result.summary["selected_step"] == expected == result.summary["best_step"]
    selection_record = json.loads((tmp_path / "result.json").read_text())["selection"]
    assert selection_record["step"] == expected
    assert "tied with step" in selection_record["reason"]
    exporting = f"exporting the model of step {expected}: accuracy {top:.4f} (tied with step"
    assert any(m.startswith(exporting) for m in events.logs()), events.logs()


def test_a_long_tie_is_listed_by_its_ends_and_its_count():
    """A saturated metric ties at every evaluation; the note had one number per step (300
    of them in one log line)."""
    state, _ = feed("accuracy", [(step, 1.0, 0.5) for step in range(10, 3010, 10)])
    note = selection.tie_note(state, "accuracy")
    assert note.startswith("tied with steps 10, 20, 30, ..., ") and "(299 steps)" in note, note
    assert len(note) < 120, note

"""A sweep's trials in one PNG (`ftctl plot SWEEP -o curves.png`).

Why a figure of its own: a sweep is judged by comparing trials, which one-job plots cannot
show. Left, every trial's validation-metric curve against the optimizer step on one axis
(the best trial drawn thick and starred at the evaluation that made it best; pruned trials
dashed, so a stopped curve is not read as a finished one). Right, one panel per swept field
whose value differs between trials:
the trial's value (its best validation metric, the number the sweep ranks) against that
field, the best trial starred; a learning rate or other positive range wider than 20x gets a
log axis, choices are spread over their order of appearance.

    from tunefleet.client import Client
    from tunefleet.client.sweep_plot import plot_sweep

    with Client() as client:
        plot_sweep(client, "sweep-1a2b3c4d", "curves.png")

Uses plot.py's pyplot-free figure (matplotlib's object API only).
"""

from __future__ import annotations

import math
from pathlib import Path

from tunefleet.client.errors import TunefleetError
from tunefleet.client.plot import _pyplot_free_figure, collect_curves, share_limits
from tunefleet.client.sweeps import Sweep, Trial

__all__ = ["build_sweep_figure", "plot_sweep", "trial_curves"]

_MAX_PARAM_PANELS = 3
_LOG_SPAN = 20.0  # a positive numeric field spanning more than this gets a log axis


def trial_curves(client, sweep: Sweep) -> dict[int, list[tuple[int, float]]]:
    """Trial number -> (step, validation metric) from its job's stored events; a trial
    whose events hold none falls back to the values the sweep recorded (`intermediate`)."""
    out: dict[int, list[tuple[int, float]]] = {}
    for trial in sweep.trials:
        series: list[tuple[int, float]] = []
        if trial.job_id:
            curves = collect_curves(client.events(trial.job_id, 0, False))
            series = curves.eval_metrics.get(sweep.metric or "accuracy", [])
        out[trial.number] = series or sorted(trial.intermediate.items())
    return out


def _label(trial: Trial) -> str:
    params = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(trial.params.items()))
    return f"t{trial.number}" + (f" ({params})" if params else "")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def build_sweep_figure(sweep: Sweep, curves: dict[int, list[tuple[int, float]]]):
    """The figure: curves of every trial, then metric vs each swept field (at most three)."""
    metric = sweep.metric or "accuracy"
    best = sweep.best()
    # A field every trial drew the same value for says nothing: no panel.
    names = sorted({k for t in sweep.trials for k in t.params})
    varied = [n for n in names if len({t.params.get(n) for t in sweep.trials}) > 1]
    fields = (varied or names)[:_MAX_PARAM_PANELS]
    if not any(curves.values()) and not any(t.value is not None for t in sweep.trials):
        raise TunefleetError(f"nothing to plot: no trial of {sweep.id} has evaluated yet")
    figure = _pyplot_free_figure(figsize=(7 + 4 * len(fields), 5.5), dpi=110, layout="constrained")
    axes = figure.subplots(1, 1 + len(fields), squeeze=False)[0]
    curve_ax, param_axes = axes[0], axes[1:]

    values = []
    for trial in sorted(sweep.trials, key=lambda t: t.number):
        series = curves.get(trial.number) or []
        if not series:
            continue
        steps, ys = zip(*series, strict=True)
        values += ys
        is_best = best is not None and trial.number == best.number
        curve_ax.plot(
            steps, ys, marker="o", markersize=3,
            linewidth=2.8 if is_best else 1.0, alpha=1.0 if is_best else 0.7,
            linestyle="--" if trial.trial_state == "PRUNED" else "-",
            label=_label(trial) + (" best" if is_best else ""), zorder=4 if is_best else 2,
            gid=f"trial-{trial.number}",
        )  # fmt: skip
        if is_best:
            pick = min if sweep.mode == "min" else max
            star = pick(series, key=lambda point: point[1])
            curve_ax.plot(*star, marker="*", markersize=16, color="gold",
                          markeredgecolor="black", linestyle="none", zorder=6,
                          gid="best")  # fmt: skip
    curve_ax.set_xlabel("optimizer step")
    curve_ax.set_ylabel(f"validation {metric}")
    curve_ax.set_title(f"{sweep.name} ({sweep.id}): {len(sweep.trials)} trials")
    if values and metric != "loss" and all(0.0 <= v <= 1.0 for v in values):
        curve_ax.set_ylim(*share_limits(values))
    if best is not None and sweep.best_value is not None:
        curve_ax.text(
            0.99, 0.03, f"best: t{best.number}, {metric} {sweep.best_value:.4f}",
            transform=curve_ax.transAxes, ha="right", va="bottom", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )  # fmt: skip
    if curve_ax.get_legend_handles_labels()[0]:
        curve_ax.legend(loc="lower left", fontsize=7, ncol=1 + len(sweep.trials) // 12)
    curve_ax.grid(True, alpha=0.3)

    done = [t for t in sweep.trials if t.value is not None]
    for ax, name in zip(param_axes, fields, strict=True):
        _param_panel(ax, name, done, best, metric)
    return figure


def _param_panel(ax, name: str, trials: list[Trial], best: Trial | None, metric: str) -> None:
    """The trials' values against one swept field; the best one starred."""
    have = [t for t in trials if name in t.params]
    numbers = [_number(t.params[name]) for t in have]
    if have and all(n is not None for n in numbers):
        xs: list[float] = numbers  # type: ignore[assignment]
        if min(xs) > 0 and max(xs) / min(xs) > _LOG_SPAN:
            ax.set_xscale("log")
    else:
        order = list(dict.fromkeys(t.params[name] for t in have))
        xs = [float(order.index(t.params[name])) for t in have]
        ax.set_xticks(range(len(order)), order, rotation=20)
    ys = [t.value for t in have]
    ax.scatter(xs, ys, color="tab:blue", zorder=3, gid="trials")
    for x, y, trial in zip(xs, ys, have, strict=True):
        ax.annotate(f"t{trial.number}", (x, y), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
        if best is not None and trial.number == best.number:
            ax.plot(x, y, marker="*", markersize=16, color="gold", markeredgecolor="black",
                    linestyle="none", zorder=5, gid="best")  # fmt: skip
    ax.set_xlabel(name)
    ax.set_ylabel(f"best validation {metric}")
    ax.grid(True, alpha=0.3)


def plot_sweep(client, sweep_id: str, path: str | Path) -> Path:
    """Fetches a sweep and its trials' stored events and writes the figure to `path`."""
    sweep = client.get_sweep(sweep_id)
    figure = build_sweep_figure(sweep, trial_curves(client, sweep))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path

"""Training curves of a job as a PNG (`ftctl plot JOB -o curves.png`): loss, evaluation
metrics and learning rate against the optimizer step, from the job's stored events.

Drawn so as not to mislead: dotted lines mark epoch boundaries (from the train metrics'
step and epoch); the lr curve starts at step 1 (the engine logs step 1), so warmup shows;
an accuracy / macro-F1 axis spans at least 0.2 (20 points) of [0, 1], so two evaluations
1.7 points apart do not fill the panel like a cliff; and the best evaluation is marked on
its point, its label in a corner of the panel, clear of the markers.

    from tunefleet.client import Client
    from tunefleet.client.plot import plot_job

    with Client() as client:
        plot_job(client, "job-1a2b3c4d", "curves.png")

Needs matplotlib (`pip install 'tunefleet[plot]'`); it is imported on first use, and only
its object API is used, so plotting never changes pyplot's backend in the caller's process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tunefleet.client.errors import TunefleetError
from tunefleet.client.types import Event

__all__ = ["Curves", "build_figure", "collect_curves", "plot_curves", "plot_job"]

# Evaluation metrics drawn in the middle panel when present (loss goes with train loss).
_EVAL_PANEL = ("accuracy", "macro_f1")
# A [0, 1] metric's axis spans at least this much (see the module docstring).
MIN_SHARE_SPAN = 0.2


@dataclass
class Curves:
    """(step, value) series of one attempt of a job."""

    train_loss: list[tuple[int, float]] = field(default_factory=list)
    lr: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    eval_metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    attempt: int = 0
    steps_per_epoch: float | None = None  # from a train event's step / epoch
    last_step: int = 0

    def empty(self) -> bool:
        return not (self.train_loss or self.lr or self.eval_metrics)


def collect_curves(events: Iterable[Event]) -> Curves:
    """The curves of the latest attempt that logged metrics: a retried job starts its
    steps again, and two attempts on one axis would read as one zig-zagging run."""
    by_attempt: dict[int, Curves] = {}
    for event in events:
        m = event.metrics
        if m is None:
            continue
        curves = by_attempt.setdefault(event.attempt, Curves(attempt=event.attempt))
        if m.phase in ("train", "eval"):
            curves.last_step = max(curves.last_step, m.step)
        if m.phase == "train" and m.epoch > 0 and m.step > 0:
            curves.steps_per_epoch = m.step / m.epoch
        if m.phase == "train":
            if m.loss is not None:
                curves.train_loss.append((m.step, m.loss))
            groups = m.lr_groups if len(m.lr_groups) > 1 else {}
            if not groups and m.lr is not None:
                groups = {"lr": m.lr}
            for name, lr in groups.items():
                curves.lr.setdefault(name, []).append((m.step, lr))
        elif m.phase == "eval":
            for name, value in m.values.items():
                curves.eval_metrics.setdefault(name, []).append((m.step, value))
    return by_attempt[max(by_attempt)] if by_attempt else Curves()


def _pyplot_free_figure(**kwargs):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise TunefleetError(
            "plotting needs matplotlib, which is not installed here: pip install 'tunefleet[plot]'"
        ) from None
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _line(ax, series, label: str, **style) -> None:
    steps, values = zip(*series, strict=True)
    ax.plot(steps, values, label=label, **style)


def _distinct_lr_series(lr: dict[str, list[tuple[int, float]]]) -> list[tuple[str, list]]:
    """One line per distinct schedule: parameter groups that share their learning rate
    all along (weight decay / no decay twins, a uniform lr) are drawn once."""
    by_series: dict[tuple, list[str]] = {}
    for name, series in sorted(lr.items()):
        by_series.setdefault(tuple(series), []).append(name)
    if len(by_series) == 1:
        return [("learning rate", list(next(iter(by_series))))]
    lines = []
    for series, names in by_series.items():
        label = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} groups)"
        lines.append((label, list(series)))
    return lines


def epoch_boundaries(curves: Curves) -> list[float]:
    """Steps where an epoch ends, up to the last step plotted."""
    spe = curves.steps_per_epoch
    if not spe or spe <= 0:
        return []
    n = int(curves.last_step / spe + 1e-9)
    return [round(k * spe, 6) for k in range(1, n + 1) if k * spe < curves.last_step]


def share_limits(values: list[float], min_span: float = MIN_SHARE_SPAN) -> tuple[float, float]:
    """y limits for a metric in [0, 1]: the data with a margin, widened to `min_span`
    around its middle, kept inside [0, 1] (a little room above 1 for the markers)."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.1, 0.01)
    lo, hi = lo - pad, hi + pad
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    if hi > 1.02:
        lo, hi = lo - (hi - 1.02), 1.02
    if lo < 0:
        lo, hi = 0.0, max(hi - lo, hi)
    return lo, min(hi, 1.02)


def plot_curves(curves: Curves, path: str | Path, *, title: str = "") -> Path:
    """Writes the three-panel PNG for `curves` to `path`; returns the path."""
    figure = build_figure(curves, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def build_figure(curves: Curves, *, title: str = ""):
    """The three panels (loss; eval metrics; learning rate) as a matplotlib Figure."""
    if curves.empty():
        raise TunefleetError("nothing to plot: the job has logged no metrics yet")
    figure = _pyplot_free_figure(figsize=(8, 9), dpi=110, layout="constrained")
    loss_ax, eval_ax, lr_ax = figure.subplots(3, 1, sharex=True)

    if curves.train_loss:
        _line(loss_ax, curves.train_loss, "train loss", color="tab:blue")
    if "loss" in curves.eval_metrics:
        _line(loss_ax, curves.eval_metrics["loss"], "eval loss", color="tab:orange", marker="o")
    loss_ax.set_ylabel("loss")

    eval_names = [n for n in _EVAL_PANEL if n in curves.eval_metrics]
    eval_names += sorted(n for n in curves.eval_metrics if n not in _EVAL_PANEL and n != "loss")
    for name in eval_names:
        _line(eval_ax, curves.eval_metrics[name], f"eval {name}", marker="o")
    if eval_names:
        lead = curves.eval_metrics[eval_names[0]]
        best = max(lead, key=lambda point: point[1])
        eval_ax.plot(*best, marker="*", markersize=14, color="gold", markeredgecolor="black",
                     linestyle="none", zorder=5)  # fmt: skip
        # In the panel's lower right corner, never on the markers it describes.
        eval_ax.text(
            0.99, 0.03, f"best {eval_names[0]} {best[1]:.4f} @ step {best[0]}",
            transform=eval_ax.transAxes, ha="right", va="bottom", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )  # fmt: skip
        shares = [v for n in eval_names for _, v in curves.eval_metrics[n]]
        if all(0.0 <= v <= 1.0 for v in shares):
            eval_ax.set_ylim(*share_limits(shares))
    else:
        eval_ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center",
                     transform=eval_ax.transAxes, color="gray")  # fmt: skip
    eval_ax.set_ylabel("eval metric")

    for label, series in _distinct_lr_series(curves.lr):
        _line(lr_ax, series, label)
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    lr_ax.set_xlabel("optimizer step")

    boundaries = epoch_boundaries(curves)
    for ax in (loss_ax, eval_ax, lr_ax):
        for step in boundaries:
            ax.axvline(step, color="gray", linestyle=":", linewidth=1, gid="epoch-boundary")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            # The eval panel's lower right corner holds the best label.
            ax.legend(loc="lower left" if ax is eval_ax else "upper right", fontsize=8)
    for k, step in enumerate(boundaries, 1):
        loss_ax.text(step, 1.0, f" epoch {k}", transform=loss_ax.get_xaxis_transform(),
                     va="top", ha="left", fontsize=7, color="gray")  # fmt: skip
    if title:
        figure.suptitle(title)
    return figure


def plot_job(client, job_id: str, path: str | Path) -> Path:
    """Fetches a job and its stored events (no following) and plots its curves."""
    job = client.get(job_id)
    curves = collect_curves(client.events(job_id, 0, False))
    attempt = f", attempt {curves.attempt}" if curves.attempt > 1 else ""
    return plot_curves(curves, path, title=f"{job.name} ({job.id}, {job.state.value}{attempt})")

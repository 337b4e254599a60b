"""Training curves of a job as a PNG (`ftctl plot JOB -o curves.png`): loss, evaluation
metrics and learning rate against the optimizer step, from the job's stored events.

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

__all__ = ["Curves", "collect_curves", "plot_curves", "plot_job"]

# Evaluation metrics drawn in the middle panel when present (loss goes with train loss).
_EVAL_PANEL = ("accuracy", "macro_f1")


@dataclass
class Curves:
    """(step, value) series of one attempt of a job."""

    train_loss: list[tuple[int, float]] = field(default_factory=list)
    lr: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    eval_metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    attempt: int = 0

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


def plot_curves(curves: Curves, path: str | Path, *, title: str = "") -> Path:
    """Writes the three-panel PNG for `curves` to `path`; returns the path."""
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
        best = max(curves.eval_metrics[eval_names[0]], key=lambda point: point[1])
        eval_ax.annotate(
            f"best {eval_names[0]} {best[1]:.4f} @ step {best[0]}",
            xy=best,
            xytext=(0, -14),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    else:
        eval_ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center",
                     transform=eval_ax.transAxes, color="gray")  # fmt: skip
    eval_ax.set_ylabel("eval metric")

    for label, series in _distinct_lr_series(curves.lr):
        _line(lr_ax, series, label)
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    lr_ax.set_xlabel("optimizer step")

    for ax in (loss_ax, eval_ax, lr_ax):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def plot_job(client, job_id: str, path: str | Path) -> Path:
    """Fetches a job and its stored events (no following) and plots its curves."""
    job = client.get(job_id)
    curves = collect_curves(client.events(job_id, 0, False))
    attempt = f", attempt {curves.attempt}" if curves.attempt > 1 else ""
    return plot_curves(curves, path, title=f"{job.name} ({job.id}, {job.state.value}{attempt})")

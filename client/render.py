"""Terminal views of a job: its event stream as it happens, and a summary at the end.

On a terminal, training progress is a live bar (epoch, step/total, loss, lr, last eval
accuracy) with state changes, log lines and reports printed above it. Anywhere else
(CI logs, pipes, tests) the same information comes as plain lines, with train metrics
throttled so a long run does not flood the log.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from tunefleet.client.types import Event, Job, JobState, LogLine, Metrics, Report, StateChange
from tunefleet.limits import printable

# Everything shown here that a user (or a worker) wrote goes through `_p`: a job name, a
# reason or a log line with a newline, an ANSI escape or a NUL could otherwise print a fake
# "SUCCEEDED job-..." line or restyle the terminal.
_p = printable

__all__ = [
    "EventRenderer",
    "format_duration",
    "format_metrics",
    "jobs_table",
    "render_job",
    "render_reports",
    "render_summary",
    "summary_lines",
    "workers_table",
]

STATE_STYLES = {
    JobState.QUEUED: "yellow",
    JobState.ASSIGNED: "cyan",
    JobState.RUNNING: "blue",
    JobState.SUCCEEDED: "bold green",
    JobState.FAILED: "bold red",
    JobState.CANCELLED: "magenta",
}
LEVEL_STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.2e}"
    return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:.1f}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_values(values: Mapping[str, float]) -> str:
    # The metrics people look for first, then the rest alphabetically.
    first = [k for k in ("accuracy", "macro_f1", "loss") if k in values]
    keys = first + sorted(k for k in values if k not in first)
    return " ".join(f"{_p(k)} {_num(values[k])}" for k in keys)


# Summary keys by role: the validation set's figures at the chosen checkpoint, and the
# test set's, evaluated once on the exported model (see worker/engine/splits.py).
SUMMARY_ROLES = (("eval_", "validation"), ("test_", "test"))


def summary_lines(summary: Mapping[str, float]) -> list[str]:
    """The job summary as lines: its other figures, then validation, then test."""
    by_role: dict[str, dict[str, float]] = {}
    rest = {}
    for key, value in summary.items():
        prefix = next((p for p, _ in SUMMARY_ROLES if key.startswith(p)), None)
        if prefix is None:
            rest[key] = value
        else:
            by_role.setdefault(prefix, {})[key[len(prefix) :]] = value
    lines = [f"metrics: {format_values(rest)}"] if rest else []
    for prefix, role in SUMMARY_ROLES:
        if prefix in by_role:
            note = " (best checkpoint)" if role == "validation" and "best_step" in rest else ""
            lines.append(f"{role}{note}: {format_values(by_role[prefix])}")
    return lines


def format_metrics(m: Metrics) -> str:
    """One line for a metrics event, e.g. "train step 20/100 epoch 0.40 loss 0.6931 ..."."""
    step = f"{m.step}/{m.total_steps}" if m.total_steps else str(m.step)
    parts = [f"{_p(m.phase or 'metrics'):<5}", f"step {step}", f"epoch {m.epoch:.2f}"]
    if m.loss is not None:
        parts.append(f"loss {_num(m.loss)}")
    if m.lr is not None:
        parts.append(f"lr {m.lr:.2e}")
    if m.values:
        parts.append(format_values(m.values))
    if m.samples_per_s is not None:
        parts.append(f"{m.samples_per_s:.1f} samples/s")
    return " ".join(parts)


def _state_text(change: StateChange, attempt: int = 0) -> Text:
    text = Text(change.state.value, style=STATE_STYLES.get(change.state, ""))
    if change.reason:
        text.append(f" {_p(change.reason)}")
    if attempt > 1:
        text.append(f" (attempt {attempt})", style="dim")
    return text


def _log_text(line: LogLine) -> Text:
    level = (line.level or "info").lower()
    return Text.assemble((f"[{_p(level)}]", LEVEL_STYLES.get(level, "")), " ", _p(line.message))


def _report_renderable(report: Report):
    if report.text:
        return Text(_p(report.text.rstrip("\n"), keep_newlines=True))
    table = Table(title=Text(_p(report.name)), title_justify="left")
    for col in report.columns:
        table.add_column(Text(_p(col)))
    for row in report.rows:
        table.add_row(*(Text(_p(cell)) for cell in row))
    return table


class EventRenderer:
    """Shows an event stream on `console`; call `handle(event)` for each, then `close()`.

    Args:
        console: Where to draw (default: a new stdout Console).
        live: Force the live bar on or off (default: on when the console is a terminal).
        throttle_s: Plain mode prints at most one train-metrics line per this many
            seconds of event time (eval metrics, logs and reports always print).
        show_debug: Also print debug-level log lines.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        live: bool | None = None,
        throttle_s: float = 2.0,
        show_debug: bool = False,
    ):
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self.throttle_s = throttle_s
        self.show_debug = show_debug
        self.last_eval: dict[str, float] = {}
        self.last_train: Metrics | None = None
        self.last_state: StateChange | None = None
        self._last_train_print: float | None = None
        self._pending_train: Metrics | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> EventRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- output -----------------------------------------------------------------------

    def print(self, renderable) -> None:
        """Print above the live bar (or as a plain line)."""
        if isinstance(renderable, str):
            renderable = Text(renderable)
        self.console.print(renderable, highlight=False, soft_wrap=True)

    def handle(self, event: Event) -> None:
        if event.kind == "metrics":
            self._metrics(event)
            return
        if event.kind == "state_change":
            self.last_state = event.payload  # type: ignore[assignment]
            self._flush_pending_train()
            self.print(_state_text(event.payload, event.attempt))  # type: ignore[arg-type]
        elif event.kind == "log":
            line: LogLine = event.payload  # type: ignore[assignment]
            if line.level == "debug" and not self.show_debug:
                return
            self.print(_log_text(line))
        elif event.kind == "report":
            self.print(_report_renderable(event.payload))  # type: ignore[arg-type]

    def _metrics(self, event: Event) -> None:
        m: Metrics = event.payload  # type: ignore[assignment]
        if m.phase == "eval":
            self.last_eval = dict(m.values)
        elif m.phase != "test":
            self.last_train = m
        if self.live:
            self._update_bar(m)
            if m.phase in ("eval", "test"):
                self.print(Text(format_metrics(m), style="green"))
            return
        if m.phase in ("eval", "test"):
            self._flush_pending_train()
            self.print(format_metrics(m))
            return
        now = event.time.timestamp() if event.time else time.monotonic()
        final = bool(m.total_steps) and m.step >= m.total_steps
        due = self._last_train_print is None or now - self._last_train_print >= self.throttle_s
        if due or final:
            self._last_train_print = now
            self._pending_train = None
            self.print(format_metrics(m))
        else:
            self._pending_train = m

    def _flush_pending_train(self) -> None:
        # The last train line before an eval or a state change is worth seeing even when
        # throttled: it is where the loss stood.
        if self._pending_train is not None:
            self.print(format_metrics(self._pending_train))
            self._pending_train = None

    def _update_bar(self, m: Metrics) -> None:
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task("training", total=None, info="")
        info = []
        t = self.last_train
        if t is not None and t.loss is not None:
            info.append(f"loss {_num(t.loss)}")
        if t is not None and t.lr is not None:
            info.append(f"lr {t.lr:.2e}")
        if "accuracy" in self.last_eval:
            info.append(f"eval acc {_num(self.last_eval['accuracy'])}")
        if t is not None and t.samples_per_s is not None:
            info.append(f"{t.samples_per_s:.0f}/s")
        self._progress.update(
            self._task,  # type: ignore[arg-type]
            description=f"epoch {m.epoch:.2f}",
            completed=m.step,
            total=m.total_steps or None,
            info=" · ".join(info),
        )

    def close(self) -> None:
        self._flush_pending_train()
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # --- the end ----------------------------------------------------------------------

    def summary(self, job: Job) -> None:
        self.close()
        render_summary(
            self.console,
            state=job.state,
            reason=job.reason,
            summary=job.summary,
            artifacts=job.artifacts,
            duration_s=job.duration_s,
            title=f"job {job.id} ({job.name})",
        )


def render_summary(
    console: Console,
    *,
    state: JobState,
    reason: str = "",
    summary: Mapping[str, float] | None = None,
    artifacts: Mapping[str, str] | None = None,
    duration_s: float | None = None,
    title: str = "",
) -> None:
    """The closing block: final state, reason, metrics (validation and test apart),
    artifact paths."""
    head = Text(state.value, style=STATE_STYLES.get(state, ""))
    if title:
        head.append(f" {_p(title)}")
    if duration_s is not None:
        head.append(f" in {format_duration(duration_s)}")
    console.print(head, highlight=False)
    if reason:
        console.print(Text(f"  reason: {_p(reason)}"), highlight=False)
    for line in summary_lines(summary or {}):
        console.print(Text(f"  {line}"), highlight=False)
    if artifacts:
        console.print("  artifacts:", highlight=False)
        width = max(len(k) for k in artifacts)
        for key in sorted(artifacts):
            console.print(Text(f"    {_p(key):<{width}}  {_p(artifacts[key])}"), highlight=False)


def _when(dt: datetime | None) -> str:
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def render_job(console: Console, job: Job) -> None:
    """`ftctl get`: everything about one job."""
    rows = [
        ("id", job.id),
        ("name", _p(job.name)),
        ("state", Text(job.state.value, style=STATE_STYLES.get(job.state, ""))),
        ("reason", _p(job.reason) or "-"),
        ("attempt", str(job.attempt)),
        ("worker", _p(job.worker_id) or "-"),
        ("priority", str(job.priority)),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("duration", format_duration(job.duration_s)),
        ("events", str(job.last_seq)),
    ]
    if job.restarts:
        max_restarts = job.spec.train.max_restarts
        rows.append(("restarts", f"{job.restarts} of {max_restarts} (training process crashed)"))
    if job.not_before is not None and not job.is_terminal():
        rows.append(("retry after", _when(job.not_before)))
    if job.cancel_requested and not job.is_terminal():
        rows.append(("cancel", "requested"))
    if job.members:  # a multi-node job: where each machine rank runs and how it is doing
        rows.append(("rendezvous", _p(job.rendezvous) or "-"))
        for m in job.members:
            part = f"{_p(m.worker_id)} ({_p(m.address) or '?'})  {m.state.value}"
            rows.append((f"rank {m.rank}", part + (f"  {_p(m.reason)}" if m.reason else "")))
    spec = job.spec
    if spec.model.source:
        model = f"{spec.model.source}: {spec.model.name or spec.model.job}"
        rows.append(("model", _p(model)))
    if spec.data.source:
        rows.append(("data", _p(f"{spec.data.source}: {spec.data.name or spec.data.train}")))
    if spec.finetune.strategy:
        rows.append(("strategy", _p(spec.finetune.strategy)))
    for key in sorted(spec.labels):
        rows.append((f"label {_p(key)}", _p(spec.labels[key])))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v if isinstance(v, Text) else Text(v))
    console.print(table)
    for line in summary_lines(job.summary):
        console.print(Text(line), highlight=False)
    if job.artifacts:
        console.print("artifacts:")
        width = max(len(k) for k in job.artifacts)
        for key in sorted(job.artifacts):
            console.print(Text(f"  {_p(key):<{width}}  {_p(job.artifacts[key])}"), highlight=False)


def render_reports(console: Console, reports: list[Report]) -> None:
    """`ftctl get`: the job's tables worth keeping in view (the compression report)."""
    for report in reports:
        console.print(_report_renderable(report))


def jobs_table(jobs: list[Job]) -> Table:
    table = Table(box=None, pad_edge=False)
    for col in ("ID", "NAME", "STATE", "ATTEMPT", "WORKER", "CREATED", "REASON"):
        table.add_column(col, no_wrap=col != "REASON")
    for j in jobs:
        table.add_row(
            Text(_p(j.id)),
            Text(_p(j.name)),
            Text(j.state.value, style=STATE_STYLES.get(j.state, "")),
            str(j.attempt),
            Text(_p(j.worker_id) or "-"),
            _when(j.created_at),
            Text(_p(j.reason)),
        )
    return table


_WORKER_STATE_STYLES = {"LIVE": "green", "DRAINING": "yellow"}


def workers_table(workers) -> Table:
    """One row per worker; a LIVE worker that takes no jobs (its disk is full...) shows
    as UNHEALTHY, with why in the last column."""
    table = Table(box=None, pad_edge=False)
    columns = ["ID", "HOST", "STATE", "GPUS", "FREE", "CPUS", "JOBS", "HEARTBEAT"]
    unhealthy = any(getattr(w, "unhealthy_reason", "") for w in workers)
    for col in columns + (["WHY"] if unhealthy else []):
        table.add_column(col, no_wrap=col != "WHY")
    for w in workers:
        reason = getattr(w, "unhealthy_reason", "")
        state = "UNHEALTHY" if reason and w.state == "LIVE" else w.state
        row = [
            Text(_p(w.id)),
            Text(_p(w.hostname)),
            Text(state, style=_WORKER_STATE_STYLES.get(state, "red")),
            str(w.gpus),
            str(w.free_gpus),
            str(w.cpus),
            Text(_p(",".join(w.job_ids)) or "-"),
            f"{w.last_heartbeat_age_s:.1f}s ago",
        ]
        table.add_row(*row, *([Text(_p(reason))] if unhealthy else []))
    return table

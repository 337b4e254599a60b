"""Terminal views of a job: its event stream as it happens, and a summary at the end.

On a terminal, progress is a live bar (progress_bar.py: the stage the job is in, its
progress, ETA, the job's wall time, loss, lr, the job's validation metric, samples/s) with
state changes, log lines and reports printed above it. Anywhere else (CI logs, pipes,
tests) the same information comes as plain lines, with train metrics and progress
throttled so a long run does not flood the log. A failure's error is printed once, where
it first appears. The summary at the end is a headline and the compression table
(summary_view.py); every figure stays in `--json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from tunefleet.client.progress_bar import STAGE_LABELS, LiveBar
from tunefleet.client.summary_view import compression_table, footnote_texts, headline_lines
from tunefleet.client.types import Event, Job, JobState, LogLine, Metrics, Report, StateChange
from tunefleet.limits import printable, unclipped
from tunefleet.progress_phases import stage_of

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


def format_values(values: Mapping[str, float], metric: str = "") -> str:
    # The job's metric, then the metrics people look for first, then the rest alphabetically.
    first = [k for k in (metric, "accuracy", "macro_f1", "loss") if k in values]
    first = list(dict.fromkeys(first))
    keys = first + sorted(k for k in values if k not in first)
    return " ".join(f"{_p(k)} {_num(values[k])}" for k in keys)


def format_metrics(m: Metrics, metric: str = "") -> str:
    """One line for a metrics event, e.g. "train step 20/100 epoch 0.40 loss 0.6931 ...";
    `metric` (the job's eval.metric) leads the values."""
    step = f"{m.step}/{m.total_steps}" if m.total_steps else str(m.step)
    parts = [f"{_p(m.phase or 'metrics'):<5}", f"step {step}", f"epoch {m.epoch:.2f}"]
    if m.loss is not None:
        parts.append(f"loss {_num(m.loss)}")
    if m.lr is not None:
        parts.append(f"lr {m.lr:.2e}")
    if m.values:
        parts.append(format_values(m.values, metric))
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
        throttle_s: Plain mode prints at most one train-metrics line (and one progress
            line) per this many seconds of event time (eval metrics, logs and reports
            always print).
        show_debug: Also print debug-level log lines.
        metric: The job's selection metric (eval.metric): the bar's "val" figure and the
            summary's lead.
        started: When the job started (Job.started_at): the bar's clock counts from it.
        show_progress: Print progress events (caching, evaluating, compressing) as plain
            lines; `ftctl logs` without -f leaves them out.
        defer_reports: Names of reports not printed as they come because the closing
            summary shows them (the compression table).
        clock: Wall-clock seconds, for the bar's clock (tests pass a fake one).
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        live: bool | None = None,
        throttle_s: float = 2.0,
        show_debug: bool = False,
        metric: str = "",
        started: datetime | None = None,
        show_progress: bool = True,
        defer_reports: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
    ):
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self.throttle_s = throttle_s
        self.show_debug = show_debug
        self.metric = metric or "accuracy"
        self.show_progress = show_progress
        self.defer_reports = defer_reports
        self.last_eval: dict[str, float] = {}
        self.last_train: Metrics | None = None
        self.last_state: StateChange | None = None
        self._last_train_print: float | None = None
        self._last_progress_print: float | None = None
        self._pending_train: Metrics | None = None
        self._errors: list[str] = []  # error texts already printed: each is printed once
        self._bar: LiveBar | None = None
        if self.live:
            self._bar = LiveBar(self.console, metric=self.metric, started=started, clock=clock)

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

    def shown_error(self, text: str) -> bool:
        """Whether `text` (a failure reason, an error line) was printed already, alone or
        as part of a longer error line: the worker relays the engine's error, the state
        change repeats it as its reason, and the summary would a third time. A reason
        the worker or the coordinator clipped is compared by what it kept: its "... (truncated, N
        chars)" end made the FAILED line repeat a long error in full."""
        text = unclipped(text.strip()).strip()
        if len(text) < 8:
            return text in self._errors
        return any(text in seen or (len(seen) >= 8 and seen in text) for seen in self._errors)

    def handle(self, event: Event) -> None:
        if event.kind == "metrics":
            self._metrics(event)
            return
        if event.kind == "state_change":
            change: StateChange = event.payload  # type: ignore[assignment]
            self.last_state = change
            self._flush_pending_train()
            if self._bar is not None and event.time is not None:
                if change.state == JobState.RUNNING:
                    self._bar.job_started(event.time.timestamp())
                elif change.state.is_terminal():
                    self._bar.job_ended(event.time.timestamp())
            if change.reason and self.shown_error(change.reason):
                change = StateChange(change.state, "")  # said above, by the error line
            elif change.state.is_terminal() and change.reason:
                self._errors.append(change.reason.strip())
            self.print(_state_text(change, event.attempt))
        elif event.kind == "log":
            line: LogLine = event.payload  # type: ignore[assignment]
            if line.level == "debug" and not self.show_debug:
                return
            if line.level == "error":
                if self.shown_error(line.message.removesuffix(_TAIL_SUFFIX)):
                    if not line.message.endswith(_TAIL_SUFFIX):
                        return
                    line = LogLine(line.level, _TAIL_SUFFIX.lstrip("; "))
                else:
                    self._errors.append(line.message.removesuffix(_TAIL_SUFFIX).strip())
            self.print(_log_text(line))
        elif event.kind == "report":
            report: Report = event.payload  # type: ignore[assignment]
            if report.name not in self.defer_reports:
                self.print(_report_renderable(report))

    def _metrics(self, event: Event) -> None:
        m: Metrics = event.payload  # type: ignore[assignment]
        stage = stage_of(m.phase)
        if m.phase == "eval":
            self.last_eval = dict(m.values)
        elif m.phase != "test" and stage is None:
            self.last_train = m
        now = event.time.timestamp() if event.time else time.monotonic()
        if self._bar is not None:
            self._bar.metrics(m, now)
            if m.phase in ("eval", "test"):
                self.print(Text(format_metrics(m, self.metric), style="green"))
            return
        if stage is not None:
            self._plain_progress(stage, m, now)
            return
        if m.phase in ("eval", "test"):
            self._flush_pending_train()
            self.print(format_metrics(m, self.metric))
            return
        final = bool(m.total_steps) and m.step >= m.total_steps
        due = self._last_train_print is None or now - self._last_train_print >= self.throttle_s
        if due or final:
            self._last_train_print = now
            self._pending_train = None
            self.print(format_metrics(m, self.metric))
        else:
            self._pending_train = m

    def _plain_progress(self, stage: str, m: Metrics, now: float) -> None:
        """Caching, evaluating, compressing as throttled lines; training progress is
        already in the train lines."""
        if not self.show_progress or stage == "training":
            return
        done, total = m.values.get("done", 0.0), m.values.get("total", 0.0)
        last = self._last_progress_print
        if done < total and last is not None and now - last < self.throttle_s:
            return
        self._last_progress_print = now
        label, unit = STAGE_LABELS.get(stage, (stage, ""))
        share = f" ({done / total:.0%})" if total else ""
        amount = f"{done:,.0f}/{total:,.0f} {unit}" if unit else f"{done / max(total, 1):.0%}"
        self.print(f"{_p(label)} {amount}{share if unit else ''}")

    def _flush_pending_train(self) -> None:
        # The last train line before an eval or a state change is worth seeing even when
        # throttled: it is where the loss stood.
        if self._pending_train is not None:
            self.print(format_metrics(self._pending_train, self.metric))
            self._pending_train = None

    def close(self) -> None:
        self._flush_pending_train()
        if self._bar is not None:
            self._bar.stop()

    # --- the end ----------------------------------------------------------------------

    def summary(self, job: Job) -> None:
        self.close()
        reason = "" if self.shown_error(job.reason) else job.reason
        render_summary(
            self.console,
            state=job.state,
            reason=reason,
            summary=job.summary,
            artifacts=job.artifacts,
            duration_s=job.duration_s,
            title=f"job {job.id} ({job.name})",
            metric=job.spec.eval.metric or self.metric,
        )


# The worker's headline above the last lines of a crashed engine's log (job_runner.py).
_TAIL_SUFFIX = "; last lines of engine.log:"


def render_summary(
    console: Console,
    *,
    state: JobState,
    reason: str = "",
    summary: Mapping[str, float] | None = None,
    artifacts: Mapping[str, str] | None = None,
    duration_s: float | None = None,
    title: str = "",
    metric: str = "",
) -> None:
    """The closing block: final state and duration, the reason (unless the caller printed
    it already), the headline (summary_view.py), the compression table."""
    head = Text(state.value, style=STATE_STYLES.get(state, ""))
    if title:
        head.append(f" {_p(title)}")
    if duration_s is not None:
        head.append(f" in {format_duration(duration_s)}")
    console.print(head, highlight=False)
    if reason:
        console.print(Text(f"  reason: {_p(reason)}"), highlight=False)
    _print_headline(console, summary or {}, artifacts or {}, metric, indent="  ")


def _print_headline(
    console: Console,
    summary: Mapping[str, float],
    artifacts: Mapping[str, str],
    metric: str,
    *,
    indent: str,
) -> None:
    rows = headline_lines(summary, metric=metric, artifacts=artifacts)
    width = max((len(label) for label, _ in rows), default=0)
    for label, text in rows:
        console.print(Text(f"{indent}{label:<{width}}  {text}"), highlight=False)
    table, notes = compression_table(summary, metric=metric)
    if table is not None:
        console.print(Text(f"{indent}compression:"), highlight=False)
        console.print(Padding(table, (0, 0, 0, len(indent) + 2), expand=False))
        for note in footnote_texts(notes):
            console.print(Text(indent) + note, highlight=False, soft_wrap=True)


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
    _print_headline(console, job.summary, job.artifacts, spec.eval.metric, indent="")
    if job.summary or job.artifacts:
        console.print(
            Text(f"every figure: ftctl get {job.id} --json; paths: ftctl artifacts {job.id}"),
            style="dim",
            highlight=False,
        )


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

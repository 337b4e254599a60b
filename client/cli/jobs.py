"""`ftctl validate/submit/jobs/get/logs/cancel`: jobs, each command one SDK call
(tunefleet.client.Client) and a rendering from tunefleet.client.render; the `ftctl jobs`
listing (one line per job, cut to the terminal) is here, as it is the CLI's alone."""

from __future__ import annotations

import argparse

from rich.text import Text

from tunefleet.client.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    INT32,
    INT64,
    Commands,
    add_throttle,
    client,
    coordinator_flag,
    json_text,
    note,
    print_problems,
    state_exit_code,
    stderr,
    stdout,
    upload_bar,
)
from tunefleet.client.cli.queue_watch import QueueWatch
from tunefleet.client.client import Client, prepare_spec
from tunefleet.client.errors import ValidationError
from tunefleet.client.render import (
    STATE_STYLES,
    EventRenderer,
    format_duration,
    render_job,
)
from tunefleet.client.types import Job
from tunefleet.limits import printable


def register(commands: Commands) -> None:
    p = commands.add("validate", validate, "check job YAML files (no coordinator needed)", flags=())
    p.add_argument("files", nargs="+", metavar="JOB.yaml")
    p.add_argument(
        "--no-check-paths", action="store_true", help="do not check that data/model paths exist"
    )
    p.add_argument(
        "--resolved",
        action="store_true",
        help="print each valid spec as YAML with every default filled in (what would run)",
    )

    p = commands.add("submit", submit, "submit a job", exit_codes=True)
    p.add_argument("file", metavar="JOB.yaml")
    p.add_argument("-f", "--follow", action="store_true", help="show progress until the job ends")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the job id (for scripts)")
    p.add_argument("--priority", type=INT32, help="override the spec's priority (higher first)")
    p.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="resubmitting with the same key returns the same job (default: a fresh key)",
    )
    p.add_argument(
        "--no-check-paths",
        action="store_true",
        help="send every data/model path as the workers' path, unchecked and not uploaded",
    )
    p.add_argument(
        "--upload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="upload the local files the job names to the coordinator's --storage-uri "
        "(default: when it has one)",
    )
    add_throttle(p)

    p = commands.add("jobs", list_jobs, "list jobs, newest first")
    p.add_argument(
        "--state",
        action="append",
        metavar="STATE",
        help="only jobs in this state (repeat or comma-separate: queued,running)",
    )
    p.add_argument(
        "--limit",
        type=INT32,
        default=100,
        metavar="N",
        help="the newest N jobs (default: %(default)s; 0: all)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = commands.add("get", get, "show a job: state, reason, metrics, artifact paths")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--json", action="store_true", help="print JSON (with the resolved spec)")

    p = commands.add(
        "logs", logs, "print a job's events; -f follows until it ends", exit_codes=True
    )
    p.add_argument("job", metavar="JOB")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    p.add_argument(
        "--after", type=INT64, default=0, metavar="SEQ", help="only events after this seq"
    )
    add_throttle(p)

    p = commands.add("cancel", cancel, "cancel a job (or a sweep: its queued and running trials)")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--reason", default="", help="recorded with the cancellation")


def validate(args) -> int:
    out, err = stdout(), stderr()
    code = EXIT_OK
    for i, path in enumerate(args.files):
        try:
            spec = prepare_spec(path, check_paths=not args.no_check_paths)
        except ValidationError as e:
            print_problems(path, e.errors, err)
            code = EXIT_FAILED
            continue
        if args.resolved:
            print(resolved_yaml(spec, path, first=i == 0), end="")
        else:
            out.print(Text(printable(f"ok: {path} ({spec.name})")))
    return code


def resolved_yaml(spec, path: str, *, first: bool = True) -> str:
    """`ftctl validate --resolved`: the spec as the coordinator would store it and the
    engine run it (defaults filled in, paths absolute), as YAML that `ftctl submit` takes
    back. Several files become several YAML documents."""
    import yaml

    from tunefleet.spec import spec_to_dict

    body = yaml.safe_dump(spec_to_dict(spec), sort_keys=False, allow_unicode=True)
    return ("" if first else "---\n") + f"# {path}, resolved\n" + body


def submit(args) -> int:
    console = stdout()
    with client(args, follow=args.follow) as sdk, upload_bar() as progress:
        handle = sdk.submit(
            args.file,
            priority=args.priority,
            idempotency_key=args.idempotency_key,
            check_paths=not args.no_check_paths,
            upload=args.upload,
            upload_progress=progress,
        )
        for note in handle.notes:  # stderr: `-q` keeps stdout to the job id
            stderr().print(Text(printable(f"note: {note}")))
        job = handle.job
        assert job is not None
        if args.quiet and not args.follow:
            print(job.id)
            return EXIT_OK
        console.print(Text(f"submitted job {job.id} ({job.name}): {job.state.value}"))
        flag = coordinator_flag(args)
        if not args.follow:
            console.print(Text(f"  follow:  ftctl logs {job.id} -f{flag}"))
            console.print(Text(f"  status:  ftctl get {job.id}{flag}"))
            console.print(Text(f"  cancel:  ftctl cancel {job.id}{flag}"))
            return EXIT_OK
        return follow(sdk, job.id, 0, console, args.throttle, flag)


def follow(sdk: Client, job_id: str, after_seq: int, console, throttle_s, flag="") -> int:
    """Renders the job's events until it ends; its outcome as the exit code.

    The bar's clock counts from the job's start and its "val" figure is the job's own
    metric, so both come from the job first; the compression report waits for the
    summary, which shows it as a table."""
    job = sdk.get(job_id)
    renderer = EventRenderer(
        console,
        throttle_s=throttle_s,
        metric=job.spec.eval.metric,
        started=job.started_at,
        defer_reports=("compression",),
    )
    queue_watch = QueueWatch(sdk, job_id, renderer, job)
    try:
        queue_watch.start()
        for event in sdk.events(job_id, after_seq, True):
            renderer.handle(event)
    except KeyboardInterrupt:
        renderer.close()
        note(
            f"stopped following; job {job_id} keeps running "
            f"(ftctl logs {job_id} -f{flag} to follow again, ftctl cancel {job_id}{flag} to stop it)"
        )
        return EXIT_INTERRUPTED
    finally:
        queue_watch.stop()
        renderer.close()
    job = sdk.get(job_id)
    renderer.summary(job)
    return state_exit_code(job.state)


def logs(args) -> int:
    console = stdout()
    with client(args, follow=args.follow) as sdk:
        # One short call first: a short id becomes the full one ("did you mean" when it
        # names none), and an unreachable coordinator is reported within --connect-timeout
        # even by a follower, which would otherwise keep retrying for FOLLOW_RETRY_S.
        job_id = sdk.resolve_job_id(args.job)
        if args.follow:
            return follow(sdk, job_id, args.after, console, args.throttle)
        with EventRenderer(
            console, live=False, throttle_s=0.0, show_debug=True, show_progress=False
        ) as renderer:
            for event in sdk.events(job_id, args.after, False):
                renderer.handle(event)
    return EXIT_OK


def list_jobs(args) -> int:
    states = [s.strip() for arg in args.state or () for s in arg.split(",") if s.strip()]
    with client(args) as sdk:
        jobs = sdk.list(states or None, limit=args.limit)
    console = stdout()
    if args.json:
        print(json_text([job_dict(j) for j in jobs]))
    elif not jobs:
        console.print("no jobs" + (f" in state {', '.join(states)}" if states else ""))
    else:
        for line in jobs_lines(jobs, console.width):
            console.print(line, overflow="ignore", crop=False)
    return EXIT_OK


# `ftctl jobs`: one line per job, whatever the reasons say. A reason can run to 1,000
# characters; wrapped in a table column it took ten lines and hid the other jobs, so it is
# cut to the width left, with an ellipsis (`ftctl get JOB` shows it whole).
JOBS_COLUMNS = ("ID", "NAME", "STATE", "DURATION", "BEST", "CREATED", "REASON")
_NAME_WIDTH = 24  # longer names are cut (to as little as _MIN_NAME when the line is short)
_MIN_NAME = 10
_MIN_REASON = 20
_BEST_KEYS = (("eval_accuracy", "acc"), ("eval_macro_f1", "f1"), ("eval_loss", "loss"))


def best_metric(job: Job) -> str:
    """The best checkpoint's validation figure: accuracy, else macro-F1, else loss."""
    for key, short in _BEST_KEYS:
        if key in job.summary:
            return f"{short} {job.summary[key]:.4f}"
    return "-"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def jobs_lines(jobs: list[Job], width: int) -> list[Text]:
    """The job table as one line per job, no line wider than `width` (the terminal's):
    when space is short CREATED goes, then the NAME column narrows, and the reason is cut
    with an ellipsis."""
    columns = list(JOBS_COLUMNS)
    rows = [
        [
            printable(j.id),
            printable(j.name),
            j.state.value,
            format_duration(j.duration_s),
            best_metric(j),
            j.created_at.astimezone().strftime("%m-%d %H:%M") if j.created_at else "-",
            printable(j.reason),
        ]
        for j in jobs
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    widths[1] = min(widths[1], _NAME_WIDTH)

    def reason_room() -> int:  # what the other columns and their gaps leave
        return width - sum(widths[:-1]) - 2 * (len(widths) - 1)

    if reason_room() < _MIN_REASON:  # an 80-column terminal: `ftctl get` has the time
        at = columns.index("CREATED")
        for cells in (columns, widths, *rows):
            del cells[at]
    if reason_room() < _MIN_REASON:
        widths[1] = max(_MIN_NAME, widths[1] - (_MIN_REASON - reason_room()))
    reason_width = max(reason_room(), 0)
    lines = []
    for cells, job in zip([columns, *rows], [None, *jobs], strict=True):
        line = Text(no_wrap=True, overflow="ignore")
        for i, cell in enumerate(cells[:-1]):
            style = STATE_STYLES.get(job.state, "") if job is not None and i == 2 else ""
            line.append(_cut(cell, widths[i]).ljust(widths[i]), style=style)
            line.append("  ")
        line.append(_cut(cells[-1], reason_width))
        line.rstrip()
        lines.append(line)
    return lines


def get(args) -> int:
    if args.job.startswith("sweep-"):  # a sweep's id: shown as `ftctl sweep get` does
        from tunefleet.client.cli.sweeps import show

        return show(args, args.job)
    with client(args) as sdk:
        job = sdk.get(args.job)
    if args.json:
        print(json_text(job_dict(job, spec=True)))
    else:
        # The headline and the compression table come from the summary (render.py).
        render_job(stdout(), job)
    return EXIT_OK


def cancel(args) -> int:
    if args.job.startswith("sweep-"):  # a sweep's id: cancelled as `ftctl sweep cancel` does
        from tunefleet.client.cli.sweeps import cancel as cancel_sweep

        return cancel_sweep(args, args.job)
    with client(args) as sdk:
        job = sdk.cancel(args.job, args.reason)
    if job.is_terminal():
        stdout().print(Text(printable(f"job {job.id}: {job.state.value} {job.reason}".rstrip())))
    else:
        stdout().print(Text(f"job {job.id}: cancel requested (was {job.state.value})"))
    return EXIT_OK


def job_dict(job: Job, *, spec: bool = False) -> dict:
    """`ftctl jobs/get --json`: one job as JSON-ready values."""
    from tunefleet.spec import spec_to_dict

    d = {
        "id": job.id,
        "name": job.name,
        "state": job.state.value,
        "reason": job.reason,
        "attempt": job.attempt,
        "restarts": job.restarts,
        "not_before": job.not_before.isoformat() if job.not_before else None,
        "worker_id": job.worker_id,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "duration_s": job.duration_s,
        "artifacts": job.artifacts,
        "summary": job.summary,
        "last_seq": job.last_seq,
        "submitter": job.submitter,
    }
    if job.members:  # a multi-node job
        d["rendezvous"] = job.rendezvous
        d["members"] = [
            {
                "rank": m.rank,
                "worker_id": m.worker_id,
                "address": m.address,
                "state": m.state.value,
                "reason": m.reason,
            }
            for m in job.members
        ]
    if spec:
        d["spec"] = spec_to_dict(job.spec)
    return d

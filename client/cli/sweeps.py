"""`ftctl sweep submit|get|list|cancel|suggest`: sweeps over the SDK (tunefleet.client.sweeps).

`ftctl sweep suggest JOB.yaml [-o FILE]` needs no coordinator: it writes a sweep file for the
job, its space proposed from the data's size (tunefleet.spec.advice), and says why.

`ftctl sweep submit FILE --follow` keeps a live table (trial, params, state, value, best so
far) until every trial has ended. `ftctl get SWEEP_ID` shows a sweep as `sweep get` does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tunefleet.client.cli.common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Commands,
    client,
    coordinator_flag,
    json_text,
    note,
    stdout,
    upload_bar,
    write_text_atomic,
)
from tunefleet.client.errors import TunefleetError
from tunefleet.client.sweeps import Sweep, SweepState
from tunefleet.limits import printable, safe_name
from tunefleet.spec import SpecError, advice, load_job_file, prepare, spec_to_dict
from tunefleet.spec.parse import parse_lenient, read_yaml
from tunefleet.spec.paths import resolve_paths

ACTIONS = ("submit", "get", "list", "cancel", "suggest")
# finetune fields of one strategy only: a suggested sweep's base job drops them.
STRATEGY_FIELDS = ("strategy", "k", "patterns", "unfreeze_every", "probe_epochs", "lora")
_POLL_S = 1.0


def register(commands: Commands) -> None:
    p = commands.add(
        "sweep",
        run,
        "sweeps: submit a job file with a sweep: block; get, list or cancel sweeps",
    )
    p.add_argument("action", choices=ACTIONS, metavar="ACTION", help=" | ".join(ACTIONS))
    p.add_argument(
        "target", nargs="?", metavar="FILE|SWEEP", help="submit/suggest: FILE; get/cancel: SWEEP"
    )
    p.add_argument("-o", "--output", default=None, help="suggest: write the sweep file here")
    p.add_argument("-f", "--follow", action="store_true", help="submit: follow until it ends")
    p.add_argument("--json", action="store_true", help="get/list: print JSON")
    p.add_argument("--reason", default="", help="cancel: why (kept with the sweep)")
    p.add_argument("--idempotency-key", default=None, help="submit: retry-safe key")
    p.add_argument(
        "--upload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="submit: upload the local files the sweep names (its space's choices too) to "
        "the coordinator's --storage-uri (default: when it has one)",
    )


def run(args) -> int:
    if args.action != "list" and not args.target:
        what = "FILE" if args.action in ("submit", "suggest") else "SWEEP"
        raise TunefleetError(f"ftctl sweep {args.action} {what}: which one?")
    if args.action == "submit":
        return submit(args)
    if args.action == "suggest":
        return suggest(args)
    if args.action == "get":
        return show(args, args.target)
    if args.action == "list":
        return list_sweeps(args)
    return cancel(args, args.target)


def cancel(args, sweep_id: str) -> int:
    """`ftctl sweep cancel SWEEP` and `ftctl cancel SWEEP`."""
    with client(args) as sdk:
        sweep = sdk.cancel_sweep(sweep_id, args.reason)
    stdout().print(Text(f"sweep {sweep.id}: {sweep.state.value} ({printable(sweep.reason)})"))
    return EXIT_OK


def suggest(args) -> int:
    """Writes JOB.yaml as a sweep file whose space fits its data (stdout, or -o FILE)."""
    args.file = args.target  # `main` names the file in a ValidationError's listing
    path = Path(args.target)
    load_job_file(path, check_paths=False)  # every problem of the job, with its path, first
    data = read_yaml(path)
    if "sweep" in data:
        raise TunefleetError(f"{path}: already has a sweep: block; suggest takes a plain job")
    spec, _ = parse_lenient(data)
    spec = resolve_paths(spec, path.resolve().parent)
    if not spec.name:
        spec.name = safe_name(path.stem)
    proposal = advice.suggest(spec, advice.data_size(spec))
    job = spec_to_dict(spec)
    # Each strategy the space does not give an lr takes its own default (a probe's is 20x
    # a fine-tune's); the job's own lr is the first one swept.
    job.get("optimizer", {}).pop("lr", None)
    for field in STRATEGY_FIELDS:  # the space picks the strategy; k comes with last_k
        job.get("finetune", {}).pop(field, None)
    header = [f"# ftctl sweep suggest {args.target}: {proposal.why}"]
    if job.pop("compression", None):
        header.append(
            "# compression left out: each trial would prune and quantize; compress the winner "
            "with a job chained on the sweep (model: {source: job, job: SWEEP_ID})"
        )
    job = {k: v for k, v in job.items() if v != {}}
    job["sweep"] = {"space": proposal.space, "algorithm": "grid", "max_concurrent": 2}
    text = "\n".join(header) + "\n" + yaml.safe_dump(job, sort_keys=False, default_flow_style=None)
    try:  # the proposal must be a sweep the one validator takes; if not, that is our bug
        prepare(yaml.safe_load(text), check_paths=False)
    except SpecError as exc:
        raise RuntimeError(f"sweep suggest proposed an invalid sweep: {exc}") from exc
    if args.output:
        write_text_atomic(Path(args.output), text)
        note(proposal.why)
        note(f"wrote {args.output}; run it with: ftctl sweep submit {args.output} --follow")
    else:
        sys.stdout.write(text)  # YAML, as is: no wrapping, no markup
    return EXIT_OK


def submit(args) -> int:
    console = stdout()
    args.file = args.target  # `main` names the file in a ValidationError's listing
    with client(args) as sdk:
        with upload_bar() as progress:
            handle = sdk.submit_sweep(
                args.target,
                idempotency_key=args.idempotency_key,
                upload=args.upload,
                upload_progress=progress,
            )
        for line in handle.notes:
            note(f"note: {line}")
        sweep = handle.sweep
        s = sweep.spec.sweep
        console.print(
            Text(
                f"submitted sweep {sweep.id} ({sweep.name}): {s.algorithm}, {s.max_trials} "
                f"trials, {s.max_concurrent} at once, {s.mode} {s.metric}"
            )
        )
        flag = coordinator_flag(args)
        if not args.follow:
            console.print(Text(f"  status:  ftctl sweep get {sweep.id}{flag}"))
            console.print(Text(f"  cancel:  ftctl sweep cancel {sweep.id}{flag}"))
            return EXIT_OK
        try:
            # Polled by a client that, like a followed job's, rides out a restarting
            # coordinator; the submit above still gave up after --connect-timeout.
            with client(args, poll=True) as poller:
                sweep = follow(poller.sweep(sweep.id), console)
        except KeyboardInterrupt:  # one message, as a followed job's (no "interrupted")
            note(
                f"stopped following; sweep {sweep.id} keeps running (ftctl sweep get {sweep.id}{flag})"
            )
            return EXIT_INTERRUPTED
    render_sweep(console, sweep, table=not console.is_terminal)  # the live table stays on screen
    return {SweepState.SUCCEEDED: EXIT_OK, SweepState.CANCELLED: EXIT_CANCELLED}.get(
        sweep.state, EXIT_FAILED
    )


def follow(handle, console) -> Sweep:
    """Polls the sweep until it ends: a live table on a terminal, a line per change
    otherwise (logs and pipes)."""
    if console.is_terminal:
        with Live(trials_table(handle.get()), console=console, refresh_per_second=2) as live:
            while not (sweep := handle.get()).is_terminal():
                live.update(trials_table(sweep))
                time.sleep(_POLL_S)
            live.update(trials_table(sweep))
        return sweep
    seen: dict[int, str] = {}
    while True:
        sweep = handle.get()
        for t in sweep.trials:
            state = t.job_state.value if t.job_state else t.trial_state
            if seen.get(t.number) != state:
                seen[t.number] = state
                value = "" if t.value is None else f" {sweep.metric} {t.value:.4g}"
                console.print(
                    Text(printable(f"trial {t.number} {t.job_id} {_params(t)}: {state}{value}"))
                )
        if sweep.is_terminal():
            return sweep
        time.sleep(_POLL_S)


def _params(trial) -> str:
    return ", ".join(f"{k}={v}" for k, v in trial.params.items())


def trials_table(sweep: Sweep) -> Table:
    """Trial, params, state, value and the best value so far, in trial order."""
    table = Table(title=f"sweep {sweep.id} ({sweep.name}): {sweep.state.value}")
    for column in ("trial", "job", "params", "state", sweep.metric, "best so far"):
        table.add_column(column)
    pick = min if sweep.mode == "min" else max
    best = None
    for t in sweep.trials:
        if t.value is not None:
            best = t.value if best is None else pick(best, t.value)
        mark = " *" if t.number == sweep.best_trial else ""
        table.add_row(
            f"{t.number}{mark}",
            t.job_id or "-",
            printable(_params(t)),
            t.job_state.value if t.job_state else t.trial_state,
            "" if t.value is None else f"{t.value:.4f}",
            "" if best is None else f"{best:.4f}",
        )
    return table


def render_sweep(console, sweep: Sweep, *, table: bool = True) -> None:
    s = sweep.spec.sweep
    done = sum(1 for t in sweep.trials if t.job_state and t.job_state.is_terminal())
    lines = [
        ("sweep", f"{sweep.id} ({sweep.name})"),
        ("state", f"{sweep.state.value}: {sweep.reason}"),
        ("search", f"{s.algorithm}, pruner {s.pruner}, {s.mode} {s.metric}"),
        (
            "trials",
            f"{done} ended of {len(sweep.trials)} created, {s.max_trials} in all, "
            f"{s.max_concurrent} at once",
        ),  # fmt: skip
    ]
    best = sweep.best()
    if best is not None:
        lines.append(("best", f"trial {best.number} ({best.job_id}) {sweep.metric} "
                              f"{best.value:.4f}: {_params(best)}"))  # fmt: skip
        if "model" in sweep.best_artifacts:
            lines.append(("best model", sweep.best_artifacts["model"]))
    for key, value in lines:
        console.print(Text(printable(f"{key + ':':<12} {value}")))
    if table and sweep.trials:
        console.print(trials_table(sweep))


def sweep_dict(sweep: Sweep) -> dict:
    s = sweep.spec.sweep
    return {
        "id": sweep.id,
        "name": sweep.name,
        "state": sweep.state.value,
        "reason": sweep.reason,
        "metric": s.metric,
        "mode": s.mode,
        "algorithm": s.algorithm,
        "pruner": s.pruner,
        "max_trials": s.max_trials,
        "max_concurrent": s.max_concurrent,
        "best_trial": sweep.best_trial,
        "best_job_id": sweep.best_job_id,
        "best_value": sweep.best_value,
        "best_artifacts": sweep.best_artifacts,
        "trials": [
            {
                "number": t.number,
                "job_id": t.job_id,
                "job_state": t.job_state.value if t.job_state else None,
                "trial_state": t.trial_state,
                "params": t.params,
                "value": t.value,
                "intermediate": {str(k): v for k, v in t.intermediate.items()},
            }
            for t in sweep.trials
        ],
    }


def show(args, sweep_id: str) -> int:
    """`ftctl sweep get SWEEP` and `ftctl get SWEEP`."""
    with client(args) as sdk:
        sweep = sdk.get_sweep(sweep_id)
    if args.json:
        print(json_text(sweep_dict(sweep)))
    else:
        render_sweep(stdout(), sweep)
    return EXIT_OK


def list_sweeps(args) -> int:
    with client(args) as sdk:
        sweeps = sdk.list_sweeps()
    if args.json:
        print(json_text([sweep_dict(s) for s in sweeps]))
        return EXIT_OK
    console = stdout()
    if not sweeps:
        console.print("no sweeps; submit one with: ftctl sweep submit FILE")
        return EXIT_OK
    table = Table()
    for column in ("id", "name", "state", "trials", "metric", "best", "best job"):
        table.add_column(column)
    for s in sweeps:
        table.add_row(
            s.id,
            printable(s.name),
            s.state.value,
            f"{len(s.trials)}/{s.spec.sweep.max_trials}",
            f"{s.mode} {s.metric}",
            "" if s.best_value is None else f"{s.best_value:.4f}",
            s.best_job_id,
        )
    console.print(table)
    return EXIT_OK

"""`ftctl run` and `ftctl plan`: the training engine (tunefleet.worker.engine) on this
machine, no coordinator. The engine needs the `worker` extra (torch...); without it these
commands say what to install.

`ftctl run` trains what the service would: a job of one process runs the engine in this
process; a job of N processes (resources.processes, x resources.nodes) is launched exactly as
a worker launches it (job_runner.engine_command: accelerate around N ranks, gloo on CPU), so
the global batch and the number of optimizer steps are the service's. Its events are
followed from the engine's events file and rendered as they come.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text

from tunefleet.client.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Commands,
    add_throttle,
    note,
    stdout,
)
from tunefleet.client.client import prepare_spec
from tunefleet.client.errors import TunefleetError
from tunefleet.client.render import EventRenderer, render_summary
from tunefleet.client.types import Event, JobState
from tunefleet.defaults import DEFAULT_RUNS

WORKER_EXTRA_MODULES = {"torch", "torchvision", "transformers", "accelerate", "safetensors"}
WORKER_EXTRA_MODULES |= {"datasets", "numpy"}


def register(commands: Commands) -> None:
    p = commands.add(
        "run", run, "train a job here, without a coordinator", exit_codes=True, flags=()
    )
    p.add_argument("file", metavar="JOB.yaml")
    p.add_argument(
        "--out",
        metavar="DIR",
        help=f"output folder (default: output.dir, else {DEFAULT_RUNS}/NAME)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="ignore checkpoints already in the output folder"
    )
    add_throttle(p)

    p = commands.add(
        "plan", plan, "print which blocks a job trains or freezes, without training", flags=()
    )
    p.add_argument("file", metavar="JOB.yaml")


def _job(path: str):
    """The job file's spec; a sweep file is refused, as `ftctl submit` refuses it: its base
    job is none of the points its space draws."""
    spec = prepare_spec(path)
    if spec.HasField("sweep"):
        raise TunefleetError(
            f"{path}: has a sweep: block, so it is not one job; run the sweep with "
            f"ftctl sweep submit {path}, or remove the block to use the base job"
        )
    return spec


def plan(args) -> int:
    spec = _job(args.file)
    plan_table = _engine_function("tunefleet.worker.engine.plan_preview", "plan_table")
    stdout().print(Text(plan_table(spec)))
    return EXIT_OK


@dataclass
class _Launched:
    """What a launched engine left: its exit code, result.json's contents, its last error."""

    code: int
    artifacts: dict[str, str] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    error: str = ""


def run(args) -> int:
    spec = _job(args.file)
    run_job = _engine_function("tunefleet.worker.engine", "run_job")
    processes_per_node = _engine_function("tunefleet.worker.engine.launch", "processes_per_node")
    out_dir = Path(args.out or spec.output.dir or Path(DEFAULT_RUNS) / spec.name).resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file of that name ("File exists" said nothing of the flag)
        named = "--out" if args.out else "output.dir" if spec.output.dir else "the output folder"
        what = "is a file, not a folder" if out_dir.exists() else e.strerror or str(e)
        raise TunefleetError(
            f"{named} {out_dir}: {what}; give a folder (it is made if missing)"
        ) from None
    console = stdout()
    renderer = EventRenderer(console, throttle_s=args.throttle)
    renderer.print(Text(f"RUNNING {spec.name} locally, writing to {out_dir}"))
    # The service runs processes on each of nodes workers; here all of them on this machine.
    processes = processes_per_node(spec) * max(spec.resources.nodes, 1)
    global_batch = spec.train.batch_size * processes * max(spec.train.grad_accum_steps, 1)
    plural = "es" if processes > 1 else ""
    renderer.print(Text(f"running {processes} process{plural} (global batch {global_batch})"))
    seq = 0

    def emit(msg) -> None:
        nonlocal seq
        seq += 1
        event = Event.from_proto(msg)
        renderer.handle(
            Event(spec.name, seq, event.time, 1, event.kind, event.payload)  # local: no ids
        )

    started = time.monotonic()
    try:
        if processes > 1:
            return _finish_launched(
                _run_launched(spec, processes, out_dir, emit, resume=not args.fresh),
                spec, out_dir, renderer, console, started,
            )  # fmt: skip
        # As _run_launched: this run's spec.json (the export keeps one it finds) and no
        # older run's result.json to pass for this one's.
        for stale in ("spec.json", "result.json"):
            (out_dir / stale).unlink(missing_ok=True)
        result = run_job(spec, out_dir, emit, resume=not args.fresh)
    except KeyboardInterrupt:
        renderer.close()
        note(f"interrupted; run the same command again to resume from {out_dir}")
        return EXIT_INTERRUPTED
    except Exception as e:
        renderer.close()
        invalid = _engine_invalid_input_type()
        if invalid is not None and isinstance(e, invalid):
            render_summary(console, state=JobState.FAILED, reason=str(e))
            return EXIT_FAILED
        raise
    renderer.close()
    render_summary(
        console,
        state=JobState.SUCCEEDED,
        summary=result.summary,
        artifacts=result.artifacts,
        duration_s=time.monotonic() - started,
        title=spec.name,
        metric=spec.eval.metric,
    )
    return EXIT_OK


def _run_launched(spec, processes: int, out_dir: Path, emit, *, resume: bool) -> _Launched:
    """Launch the engine as a worker would (job_runner.engine_command), follow its events
    into `emit`, and wait for it. Ctrl-C asks it to checkpoint and stop (SIGTERM, as a
    drain does), so the same command resumes."""
    from tunefleet.spec import spec_to_dict
    from tunefleet.worker.engine_process import dies_with_parent
    from tunefleet.worker.event_tail import EventTail
    from tunefleet.worker.job_runner import engine_command

    local = type(spec)()
    local.CopyFrom(spec)
    local.resources.nodes, local.resources.processes = 1, processes  # one machine: this one
    spec_path = out_dir / "spec.json"
    spec_path.write_text(json.dumps(spec_to_dict(local)), encoding="utf-8")
    events_path = out_dir / "events.jsonl"
    tail = EventTail(events_path)  # from its current end: a rerun appends
    command = engine_command(local, spec_path, out_dir, events_path)
    if not resume:
        command.append("--no-resume")
    (out_dir / "result.json").unlink(missing_ok=True)  # an older run's must not pass for this
    launched = _Launched(code=-1)

    def relay() -> None:
        for event in tail.read():
            if event.WhichOneof("kind") == "log" and event.log.level == "error":
                launched.error = event.log.message.removeprefix("invalid job input: ")
            emit(event)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (out_dir / "engine.log").open("ab") as log_file:
        process = subprocess.Popen(
            dies_with_parent(command), stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        while process.poll() is None:
            relay()
            time.sleep(0.2)
    except KeyboardInterrupt:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        raise
    finally:
        relay()
    launched.code = process.returncode
    result = out_dir / "result.json"
    if launched.code == 0 and result.is_file():
        data = json.loads(result.read_text(encoding="utf-8"))
        launched.artifacts = data.get("artifacts", {})
        launched.summary = data.get("summary", {})
    return launched


def _finish_launched(launched: _Launched, spec, out_dir, renderer, console, started) -> int:
    renderer.close()
    if launched.code == 0:
        render_summary(
            console,
            state=JobState.SUCCEEDED,
            summary=launched.summary,
            artifacts=launched.artifacts,
            duration_s=time.monotonic() - started,
            title=spec.name,
            metric=spec.eval.metric,
        )
        return EXIT_OK
    reason = launched.error or f"the engine exited with code {launched.code}"
    if not launched.error:
        log = out_dir / "engine.log"
        reason += f"; the last lines of {log}:\n" + "\n".join(_last_lines(log, 20))
    render_summary(console, state=JobState.FAILED, reason=reason)
    return EXIT_FAILED


def _last_lines(path: Path, count: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 16 * 1024, 0))
            return f.read().decode("utf-8", errors="replace").splitlines()[-count:]
    except OSError:
        return []


def _engine_function(module: str, name: str):
    """`module.name` from the engine, or a clear error when the worker extra is missing.

    The engine package loads torch lazily on attribute access, so both steps are guarded.
    """
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        missing = (e.name or "").split(".")[0]
        if missing in WORKER_EXTRA_MODULES:
            raise TunefleetError(
                f"the training engine needs {missing}, which is not installed here: "
                "pip install 'tunefleet[worker]'"
            ) from None
        raise


def _engine_invalid_input_type():
    try:
        from tunefleet.worker.engine.errors import InvalidJobInput
    except ImportError:
        return None
    return InvalidJobInput


def user_errors() -> tuple[type[BaseException], ...]:
    """The engine's errors that mean the job's input is wrong (`ftctl plan` on a job whose
    data or model the engine refuses): ftctl prints them in one line, not a traceback."""
    invalid = _engine_invalid_input_type()
    return (invalid,) if invalid is not None else ()

"""`ftctl run` and `ftctl plan`: the training engine (tunefleet.worker.engine) in this
process, no coordinator. The engine needs the `worker` extra (torch...); without it these
commands say what to install."""

from __future__ import annotations

import importlib
import time
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


def plan(args) -> int:
    spec = prepare_spec(args.file)
    plan_table = _engine_function("tunefleet.worker.engine.plan_preview", "plan_table")
    stdout().print(Text(plan_table(spec)))
    return EXIT_OK


def run(args) -> int:
    spec = prepare_spec(args.file)
    run_job = _engine_function("tunefleet.worker.engine", "run_job")
    out_dir = Path(args.out or spec.output.dir or Path(DEFAULT_RUNS) / spec.name).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    console = stdout()
    renderer = EventRenderer(console, throttle_s=args.throttle)
    renderer.print(Text(f"RUNNING {spec.name} locally, writing to {out_dir}"))
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
    )
    return EXIT_OK


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

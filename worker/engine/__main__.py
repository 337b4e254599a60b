"""Child-process entry point of the engine (see INTERFACES.md).

    python -m tunefleet.worker.engine --spec SPEC.json --out DIR --events EVENTS.jsonl [--no-resume]

Exit codes: 0 success (DIR/result.json written), 2 invalid job input (do not retry),
anything else a crash (the worker may restart; the run resumes from its last checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from pathlib import Path

from tunefleet.limits import clip
from tunefleet.spec import spec_from_dict
from tunefleet.worker.engine.errors import (
    EXIT_INVALID_INPUT,
    EXIT_NO_SPACE,
    InvalidJobInput,
    is_no_space,
)
from tunefleet.worker.engine.events import JsonlEventSink, log_event

# What one error may add to engine.log (a 70 MB column name must not make a 140 MB log).
_MAX_LOG_BYTES = 64 * 1024


def _is_main_process() -> bool:
    # Set by accelerate launch / torchrun for every rank; absent for a single process.
    return os.environ.get("RANK", "0") == "0"


def _die_with_launcher() -> None:
    """A rank of a multi-process job gets SIGKILL when its launcher dies.

    The worker starts the launcher (`accelerate launch`) so that the kernel kills it when the
    worker dies, kill -9 included (engine_process.dies_with_parent); the ranks are the launcher's
    children, and without this they would train on as orphans, writing checkpoints into the
    job's folder while the requeued attempt runs there. Linux only.
    """
    if sys.platform != "linux" or "LOCAL_RANK" not in os.environ:
        return
    import ctypes
    import signal

    launcher = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != launcher:  # it died before the line above took effect
        os._exit(1)


def _report_crash(emit, e: BaseException) -> None:
    """A crash: say what it was in the job's events too, then let the traceback and the
    non-zero exit code tell the worker (which may restart and resume)."""
    with contextlib.suppress(OSError):
        emit(log_event(f"engine crashed: {type(e).__name__}: {e}", level="error"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunefleet.worker.engine", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--spec", required=True, type=Path, help="resolved JobSpec as JSON")
    parser.add_argument("--out", required=True, type=Path, help="the job's output folder")
    parser.add_argument(
        "--events", required=True, type=Path, help="events JSON-lines file (appended)"
    )
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    args = parser.parse_args(argv)
    _die_with_launcher()

    sink = JsonlEventSink(args.events) if _is_main_process() else None
    emit = sink if sink is not None else (lambda event: None)
    try:
        try:
            spec = spec_from_dict(json.loads(args.spec.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise InvalidJobInput(f"--spec {args.spec}: cannot read the job spec: {e}") from e

        from tunefleet.worker.engine.trainer import run_job

        run_job(spec, args.out, emit, resume=not args.no_resume)
        return 0
    except InvalidJobInput as e:
        # The traceback is for the worker's operators (engine.log); the job's events get the
        # one line that says what to fix.
        print(clip("".join(traceback.format_exc()), _MAX_LOG_BYTES), file=sys.stderr)
        print(clip(f"invalid job input: {e}", _MAX_LOG_BYTES), file=sys.stderr)
        emit(log_event(f"invalid job input: {e}", level="error"))
        return EXIT_INVALID_INPUT
    except Exception as e:
        if not is_no_space(e):
            _report_crash(emit, e)
            raise
        # The disk may be too full for these lines too; the exit code says it all.
        with contextlib.suppress(OSError):
            traceback.print_exc()
        with contextlib.suppress(OSError):
            emit(log_event(f"disk full: {e}", level="error"))
        return EXIT_NO_SPACE
    finally:
        if sink is not None:
            sink.close()


if __name__ == "__main__":
    sys.exit(main())

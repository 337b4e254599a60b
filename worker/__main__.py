"""`python -m tunefleet.worker --coordinator HOST:PORT`: run a worker until SIGINT/SIGTERM.

The same flags and the same daemon as `ftctl worker` (both come from
tunefleet.worker.command_line), without the SDK's CLI around it.
"""

from __future__ import annotations

import argparse
import sys

from tunefleet.logging_setup import configure_command_logging
from tunefleet.worker.command_line import (
    WorkerFlagError,
    add_worker_arguments,
    check_worker_arguments,
    daemon_from_args,
    run_until_signalled,
)
from tunefleet.worker.rpc_retry import WorkerIdInUse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tunefleet.worker",
        description="Run a tunefleet worker: take jobs from the coordinator and train them.",
    )
    add_worker_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.coordinator:
        parser.error("--coordinator HOST:PORT is required (or set TUNEFLEET_COORDINATOR)")
    try:
        check_worker_arguments(args)
        configure_command_logging(args.log_level, args.log_format)
        daemon = daemon_from_args(args)
    except WorkerFlagError as exc:
        parser.error(str(exc))
    try:
        run_until_signalled(daemon)
    except WorkerIdInUse as exc:  # another process runs with our --id: say so, once
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

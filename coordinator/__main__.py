"""`python -m tunefleet.coordinator`: run a coordinator until SIGINT/SIGTERM.

    python -m tunefleet.coordinator --listen 127.0.0.1:50051 --db .tunefleet/coordinator.db \
        --heartbeat-s 2 --lease-s 10

The same flags and the same server as `ftctl server` (both come from
tunefleet.coordinator.command_line), without the SDK's CLI around it: the fault-injection
tests start it as a child process so they can kill -9 it.
"""

from __future__ import annotations

import argparse
import sys

from tunefleet.coordinator.command_line import (
    add_server_arguments,
    check_server_arguments,
    serve_from_args,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tunefleet.coordinator",
        description="Run a tunefleet coordinator (jobs, events and workers in SQLite).",
    )
    add_server_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        security = check_server_arguments(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        serve_from_args(args, security)
    except (RuntimeError, ValueError) as exc:  # cannot bind, malformed --listen
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

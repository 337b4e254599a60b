"""`python -m tunefleet.coordinator`: run a coordinator until SIGINT/SIGTERM.

    python -m tunefleet.coordinator --listen 127.0.0.1:50051 --db .tunefleet/coordinator.db \
        --heartbeat-s 2 --lease-s 10

The same server as `ftctl server`, without the SDK's CLI around it: the fault-injection
tests start it as a child process so they can kill -9 it. TLS and tokens are `ftctl
server`'s options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunefleet.coordinator.server import check_lease_settings, serve
from tunefleet.defaults import DEFAULT_ADDRESS, DEFAULT_DB_PATH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunefleet.coordinator",
        description="Run a tunefleet coordinator (jobs, events and workers in SQLite).",
    )
    parser.add_argument("--listen", default=DEFAULT_ADDRESS, help="HOST:PORT (%(default)s)")
    parser.add_argument(
        "--db", type=Path, default=Path(DEFAULT_DB_PATH), help="SQLite database"
    )
    parser.add_argument(
        "--heartbeat-s",
        type=float,
        default=2.0,
        help="how often workers send heartbeats (default: %(default)s)",
    )
    parser.add_argument(
        "--lease-s",
        type=float,
        default=10.0,
        help="a worker silent this long is lost and its jobs are requeued (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        check_lease_settings(args.heartbeat_s, args.lease_s)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        serve(
            args.listen,
            args.db,
            heartbeat_interval_s=args.heartbeat_s,
            lease_timeout_s=args.lease_s,
        )
    except (RuntimeError, ValueError) as exc:  # cannot bind, malformed --listen
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

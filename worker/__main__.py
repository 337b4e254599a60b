"""`python -m tunefleet.worker --coordinator HOST:PORT`: run a worker until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from tunefleet.worker.daemon import WorkerDaemon


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunefleet.worker",
        description="Run a tunefleet worker: take jobs from the coordinator and train them.",
    )
    parser.add_argument(
        "--coordinator",
        default=os.environ.get("TUNEFLEET_COORDINATOR"),
        help="HOST:PORT of the coordinator (default: $TUNEFLEET_COORDINATOR)",
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path(".tunefleet/artifacts"),
        help="folder for job outputs without output.dir (default: %(default)s)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="working directory of training processes"
    )
    parser.add_argument(
        "--gpus", type=int, default=None, help="GPUs to offer (default: detected with torch)"
    )
    parser.add_argument(
        "--id", dest="worker_id", default=None, help="stable worker id (default: assigned)"
    )
    parser.add_argument("--poll-s", type=float, default=5.0, help="AcquireJob long-poll seconds")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    args = parser.parse_args(argv)
    if not args.coordinator:
        parser.error("--coordinator HOST:PORT is required (or set TUNEFLEET_COORDINATOR)")
    if args.gpus is not None and args.gpus < 0:
        parser.error(f"--gpus must be >= 0, got {args.gpus}")
    if args.poll_s <= 0:
        parser.error(f"--poll-s must be > 0, got {args.poll_s}")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    daemon = WorkerDaemon(
        args.coordinator,
        artifacts_root=args.artifacts,
        work_root=args.work_dir,
        gpus=args.gpus,
        worker_id=args.worker_id,
        poll_s=args.poll_s,
    )

    def on_signal(signum, _frame):
        daemon.stop()  # safe in a signal handler

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

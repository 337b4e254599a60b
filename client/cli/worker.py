"""`ftctl worker`: a worker daemon in the foreground. Its flags and the daemon itself are
tunefleet.worker.command_line's, shared with `python -m tunefleet.worker`; `ftctl worker
drain ID` asks the coordinator to drain one (tunefleet.client.cli.workers)."""

from __future__ import annotations

import os

from tunefleet.client.cli import workers
from tunefleet.client.cli.common import EXIT_OK, Commands
from tunefleet.client.errors import TunefleetError
from tunefleet.defaults import DEFAULT_ADDRESS, ENV_COORDINATOR
from tunefleet.logging_setup import configure_command_logging
from tunefleet.worker.command_line import (
    WorkerFlagError,
    add_worker_arguments,
    check_worker_arguments,
    daemon_from_args,
    run_until_signalled,
)
from tunefleet.worker.rpc_retry import WorkerIdInUse


def register(commands: Commands) -> None:
    p = commands.add(
        "worker",
        run_worker,
        "run a worker in the foreground; `ftctl worker drain ID` drains one (admin)",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("drain",),
        help="drain: stop worker WORKER_ID taking work; its job checkpoints and moves on",
    )
    p.add_argument("worker_id", nargs="?", metavar="WORKER_ID", help="(with drain)")
    # --coordinator, --token-file and --tls-ca are ftctl's global flags.
    add_worker_arguments(p, connection=False)


def run_worker(args) -> int:
    if args.action == "drain":
        return workers.drain(args)
    args.coordinator = args.coordinator or os.environ.get(ENV_COORDINATOR) or DEFAULT_ADDRESS
    try:
        check_worker_arguments(args)
        configure_command_logging(args.log_level, args.log_format)
        daemon = daemon_from_args(args)
    except WorkerFlagError as e:
        raise TunefleetError(str(e)) from None
    try:
        run_until_signalled(daemon)
    except WorkerIdInUse as e:  # another process runs with this --id
        raise TunefleetError(str(e)) from None
    return EXIT_OK

"""`ftctl`: the command line view of the tunefleet SDK, one module per noun.

This module only assembles the commands; each noun module registers its own
(`register(commands)`) and stays thin over the SDK or the component it starts:

    jobs       validate, submit, jobs, get, logs, cancel   SDK calls (tunefleet.client)
    sweeps     sweep submit|get|list|cancel                SDK calls (tunefleet.client.sweeps)
    compare    compare JOB|SWEEP...                        SDK calls
    workers    workers (and `worker drain`)                SDK calls
    server     server          the coordinator (tunefleet.coordinator.command_line)
    worker     worker          a worker daemon (tunefleet.worker.command_line)
    up         up              coordinator + local worker (tunefleet.client.local)
    token      token           a token and its tokens-file entry (tunefleet.coordinator.auth)
    engine     run, plan       the training engine in this process (tunefleet.worker.engine)
    artifacts  plot, artifacts a job's curves and artifacts
    common     exit codes, global flags and their defaults, output helpers

`python -m tunefleet.coordinator` and `python -m tunefleet.worker` build their parsers
from the same functions as `ftctl server` and `ftctl worker`, so the flags cannot drift.
"""

from __future__ import annotations

import argparse
import os

# gRPC core logs connection noise (GOAWAYs, reconnects, bind failures) to stderr; a CLI
# user gets our one-line errors instead. It reads this when grpc is first imported, which
# is just below (tunefleet.client itself imports lazily). GRPC_VERBOSITY=ERROR or DEBUG in
# the environment brings the core's logs back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from tunefleet.client.cli import (  # noqa: E402
    artifacts,
    compare,
    engine,
    jobs,
    server,
    sweeps,
    token,
    up,
    worker,
    workers,
)
from tunefleet.client.cli.common import (  # noqa: E402
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    Commands,
    add_global_flags,
    error,
    print_problems,
    stderr,
)
from tunefleet.client.errors import TunefleetError, Unavailable, ValidationError  # noqa: E402
from tunefleet.defaults import DEFAULT_ADDRESS, ENV_COORDINATOR  # noqa: E402

__all__ = ["build_parser", "main"]

# In this order in `ftctl --help`.
NOUNS = (jobs, sweeps, compare, workers, server, worker, up, token, engine, artifacts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftctl",
        description="tunefleet: submit and watch fine-tuning jobs, or run the cluster.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_flags(parser, in_command=False)
    parser.add_argument("--version", action="version", version=f"ftctl {_version()}")
    commands = Commands(parser)
    for noun in NOUNS:
        noun.register(commands)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunefleet")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as e:
        if e.errors:
            print_problems(getattr(args, "file", None) or "job spec", e.errors, stderr())
        else:
            error(e.message)
        return EXIT_FAILED
    except Unavailable as e:
        error(
            f"cannot reach coordinator at {e.target or args.coordinator or DEFAULT_ADDRESS}: "
            f"is `ftctl server` running? (set --coordinator or {ENV_COORDINATOR})"
        )
        return EXIT_FAILED
    except TunefleetError as e:
        error(e.message)
        return EXIT_FAILED
    except FileNotFoundError as e:
        error(f"no such file: {e.filename or e}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED


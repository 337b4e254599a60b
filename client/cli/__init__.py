"""`ftctl`: the command line view of the tunefleet SDK, one module per noun.

This module only assembles the commands; each noun module registers its own
(`register(commands)`) and stays thin over the SDK or the component it starts:

    jobs       validate, submit, jobs, get, logs, cancel   SDK calls (tunefleet.client)
    sweeps     sweep submit|get|list|cancel                SDK calls (tunefleet.client.sweeps)
    compare    compare JOB|SWEEP...                        SDK calls
    workers    workers (and `worker drain`)                SDK calls
    dashboard  dashboard       the web dashboard (tunefleet.client.dashboard, SDK calls)
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
import contextlib
import os
import sys

# gRPC core logs connection noise (GOAWAYs, reconnects, bind failures) to stderr; a CLI
# user gets our one-line errors instead. It reads this when grpc is first imported, which
# is just below (tunefleet.client itself imports lazily). GRPC_VERBOSITY=ERROR or DEBUG in
# the environment brings the core's logs back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from tunefleet.client.cli import (  # noqa: E402
    artifacts,
    compare,
    dashboard,
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
    note,
    print_problems,
    security,
    stderr,
)
from tunefleet.client.cli.unreachable import unreachable_message  # noqa: E402
from tunefleet.client.errors import TunefleetError, Unavailable, ValidationError  # noqa: E402
from tunefleet.defaults import DEFAULT_ADDRESS  # noqa: E402

__all__ = ["ENV_DEBUG", "build_parser", "console_main", "main"]

# In this order in `ftctl --help`.
NOUNS = (jobs, sweeps, compare, workers, dashboard, server, worker, up, token, engine, artifacts)

# TUNEFLEET_DEBUG=1 (or `ftctl --debug ...`): print the full traceback of any error.
ENV_DEBUG = "TUNEFLEET_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftctl",
        description="tunefleet: submit and watch fine-tuning jobs, or run the cluster.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_flags(parser, in_command=False)
    parser.add_argument(
        "--debug",
        action="store_true",
        default=os.environ.get(ENV_DEBUG, "") not in ("", "0"),
        help=f"on an error, also print the full traceback (default: ${ENV_DEBUG})",
    )
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
    """Runs one command. No error a user can cause ends in a traceback: each known kind
    becomes one clear message and exit code 1; anything else is a bug, reported in one
    line that says how to see its traceback (--debug / $TUNEFLEET_DEBUG)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `ftctl jobs | head`: the reader left; nothing to say
        return EXIT_FAILED
    except Exception as e:
        if args.debug:
            import traceback

            traceback.print_exc()
        return report_error(e, args)


def console_main() -> None:
    """The `ftctl` command: main(), then exit with its code. After a Ctrl-C at once
    (os._exit, our one line flushed): the interrupted gRPC calls' threads may still be
    polling, and tearing them down at interpreter exit could print a gRPC core error
    ("epoll_wait error: Bad file descriptor") under that line, or hold the exit."""
    code = main()
    if code == EXIT_INTERRUPTED:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors of components a noun runs in this process (the engine's InvalidJobInput...),
    which each noun module names (`user_errors()`) so that this module imports none."""
    types: tuple[type[BaseException], ...] = ()
    for noun in NOUNS:
        named = getattr(noun, "user_errors", None)
        types += tuple(named()) if named else ()
    return types


def report_error(e: Exception, args: argparse.Namespace) -> int:
    """One clear message on stderr for `e`; the exit code."""
    from tunefleet.spec import SpecError

    if isinstance(e, ValidationError) and e.errors:
        print_problems(getattr(args, "file", None) or "job spec", e.errors, stderr())
    elif isinstance(e, SpecError):
        print_problems(e.source or getattr(args, "file", None) or "job spec", e.errors, stderr())
    elif isinstance(e, Unavailable):
        target = e.target or getattr(args, "coordinator", None) or DEFAULT_ADDRESS
        try:
            tls = security(args).tls if hasattr(args, "tls_ca") else False
        except TunefleetError:
            tls = False
        error(unreachable_message(target, e.message, tls=tls))
    elif isinstance(e, TunefleetError):
        error(e.message)
    elif isinstance(e, _user_error_types()):
        error(str(e) or type(e).__name__)
    elif isinstance(e, OSError) and (e.filename or e.strerror):
        what = "no such file" if isinstance(e, FileNotFoundError) else e.strerror or str(e)
        error(f"{what}: {e.filename}" if e.filename else what)
    elif _is_rpc_error(e):
        from tunefleet.client.errors import from_rpc_error

        return report_error(from_rpc_error(e, target=getattr(args, "coordinator", None)), args)
    else:
        error(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if not args.debug:
            note(
                f"this is a bug in ftctl, not in your input; run again with --debug "
                f"(ftctl --debug {args.command} ...) or {ENV_DEBUG}=1 to see the full traceback"
            )
    return EXIT_FAILED


def _is_rpc_error(e: Exception) -> bool:
    import grpc

    return isinstance(e, grpc.RpcError)

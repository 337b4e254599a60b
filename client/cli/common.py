"""What every `ftctl` command shares: exit codes, the global flags and their defaults, the
SDK client they describe, output consoles and one-line errors, and `Commands`, through
which each noun module registers its sub-commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from rich.console import Console
from rich.text import Text

from tunefleet.client.client import Client, RetryPolicy
from tunefleet.client.errors import TunefleetError
from tunefleet.client.types import JobState
from tunefleet.defaults import DEFAULT_ADDRESS, ENV_COORDINATOR
from tunefleet.limits import printable
from tunefleet.transport import ChannelSecurity

EXIT_OK = 0
EXIT_FAILED = 1  # the job FAILED, or the command itself failed (bad spec, unreachable...)
EXIT_USAGE = 2  # bad command line (argparse)
EXIT_CANCELLED = 3  # the followed job was CANCELLED
EXIT_INTERRUPTED = 130  # Ctrl-C while following: the job keeps running

EXIT_CODES_HELP = """\
exit codes:
  0    success; with --follow / logs -f / run: the job SUCCEEDED
  1    the job FAILED, or the command failed (invalid spec, unknown job,
       coordinator unreachable...); the reason is printed to stderr
  2    bad command line
  3    the followed job was CANCELLED
  130  interrupted (Ctrl-C); a followed job keeps running on the coordinator
"""

DEFAULT_CONNECT_TIMEOUT_S = 10.0

Run = Callable[[argparse.Namespace], int]


# --- the global flags -----------------------------------------------------------------


def add_global_flags(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    """--coordinator, --connect-timeout, --token-file and --tls-ca. They are accepted before
    or after the command: in_command=True adds them to a command with SUPPRESS defaults, so
    a command that does not repeat one keeps the value given before it."""

    def default(value):
        return argparse.SUPPRESS if in_command else value

    parser.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=default(None),
        help=f"coordinator address (default: ${ENV_COORDINATOR}, else {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        metavar="S",
        default=default(DEFAULT_CONNECT_TIMEOUT_S),
        help="keep retrying an unreachable coordinator this long (default: 10)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        default=default(None),
        help="file holding your token, sent with every call (default: $TUNEFLEET_TOKEN, else "
        "the file in $TUNEFLEET_TOKEN_FILE). There is no flag taking the token itself: "
        "`ps` and shell history would show it",
    )
    parser.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=default(None),
        help="CA certificate (PEM) that signed the coordinator's: connect with TLS (default: "
        "$TUNEFLEET_TLS_CA). A coordinator requiring client certificates also needs "
        "$TUNEFLEET_TLS_CERT and $TUNEFLEET_TLS_KEY",
    )


def add_throttle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--throttle",
        type=float,
        default=2.0,
        metavar="S",
        help="without a terminal, print at most one train-metrics line per S seconds",
    )


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high` (the wire's int32/int64), so a value
    the request cannot carry is a bad command line, not a traceback."""

    def parse(text: str) -> int:
        value = int(text)  # ValueError: argparse says "invalid int value"
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


INT32 = int_in(-(2**31), 2**31 - 1)
INT64 = int_in(-(2**63), 2**63 - 1)


class Commands:
    """The sub-command table each noun module adds its commands to (`register(commands)`)."""

    def __init__(self, parser: argparse.ArgumentParser):
        self._sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
        self._global = argparse.ArgumentParser(add_help=False)
        add_global_flags(self._global, in_command=True)

    def add(
        self, name: str, run: Run, help: str, *, exit_codes: bool = False
    ) -> argparse.ArgumentParser:
        """A command `name` that calls `run(args)`; exit_codes: its --help lists them."""
        parser = self._sub.add_parser(
            name,
            parents=[self._global],
            help=help,
            description=help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **({"epilog": EXIT_CODES_HELP} if exit_codes else {}),
        )
        parser.set_defaults(func=run)
        return parser


# --- talking to the coordinator -------------------------------------------------------


def security(args) -> ChannelSecurity:
    """--token-file / --tls-ca (+ a worker's --tls-cert/--tls-key), then the environment."""
    try:
        return ChannelSecurity.resolve(
            token_file=args.token_file,
            tls_ca=args.tls_ca,
            tls_cert=getattr(args, "tls_cert", None),
            tls_key=getattr(args, "tls_key", None),
        )
    except ValueError as e:
        raise TunefleetError(str(e)) from None


def client(args) -> Client:
    return Client(
        args.coordinator,
        retry=RetryPolicy(max_elapsed_s=args.connect_timeout),
        security=security(args),
    )


def coordinator_flag(args) -> str:
    """`--coordinator X` to repeat in printed hints, when the user gave one."""
    return f" --coordinator {args.coordinator}" if args.coordinator else ""


def state_exit_code(state: JobState) -> int:
    return {JobState.SUCCEEDED: EXIT_OK, JobState.CANCELLED: EXIT_CANCELLED}.get(state, EXIT_FAILED)


# --- output ---------------------------------------------------------------------------


def stdout() -> Console:
    # soft_wrap: a long line (a path, an error) stays one line that the terminal wraps,
    # so it can be copied and grepped whole.
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 200  # tables in logs and pipes should not wrap at 80 columns
    return console


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    # Coordinator refusals quote what a user wrote: no raw control characters.
    stderr().print(Text(printable(f"error: {message}"), style="red"))


def note(message: str) -> None:
    stderr().print(Text(printable(message), style="yellow"))


def print_problems(source: str, errors, console: Console) -> None:
    n = len(errors)
    source = printable(source)
    console.print(Text(f"invalid: {source} ({n} problem{'s' if n != 1 else ''})", style="red"))
    for e in errors:  # they quote what the user wrote
        line = f"  {e.path}: {e.message}" if e.path else f"  {e.message}"
        console.print(Text(printable(line)))

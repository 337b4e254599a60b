"""What every `ftctl` command shares: exit codes, the global flags and their defaults, the
SDK client they describe, output consoles and one-line errors, and `Commands`, through
which each noun module registers its sub-commands."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from tunefleet.client.client import Client, RetryPolicy
from tunefleet.client.errors import TunefleetError
from tunefleet.client.types import JobState
from tunefleet.client.uploads import UploadProgress
from tunefleet.defaults import DEFAULT_ADDRESS, ENV_COORDINATOR
from tunefleet.limits import printable
from tunefleet.transport import ChannelSecurity, target_problem

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

# One-shot commands give up on an unreachable coordinator after this long: a typo in the
# address or a coordinator that is not running should not look like a hang. Followers
# (`submit -f`, `logs -f`) wait longer for a coordinator they lose mid-job, and say so.
DEFAULT_CONNECT_TIMEOUT_S = 4.0
FOLLOW_RETRY_S = 60.0
GLOBAL_FLAGS = ("--coordinator", "--connect-timeout", "--token-file", "--tls-ca")

Run = Callable[[argparse.Namespace], int]


# --- the global flags -----------------------------------------------------------------


def add_global_flags(
    parser: argparse.ArgumentParser, *, in_command: bool, only: tuple[str, ...] = GLOBAL_FLAGS
) -> None:
    """--coordinator, --connect-timeout, --token-file and --tls-ca (or the subset `only`).
    They are accepted before or after the command: in_command=True adds them to a command
    with SUPPRESS defaults, so a command that does not repeat one keeps the value given
    before it."""

    def default(value):
        return argparse.SUPPRESS if in_command else value

    def add_argument(flag: str, **kw) -> None:
        if flag in only:
            parser.add_argument(flag, **kw)

    add_argument(
        "--coordinator",
        type=coordinator_arg,
        metavar="HOST:PORT",
        default=default(None),
        help=f"coordinator address (default: ${ENV_COORDINATOR}, else {DEFAULT_ADDRESS})",
    )
    add_argument(
        "--connect-timeout",
        type=seconds_arg,
        metavar="S",
        default=default(DEFAULT_CONNECT_TIMEOUT_S),
        help="give up on an unreachable coordinator after S seconds (default: "
        f"{DEFAULT_CONNECT_TIMEOUT_S:g}; a followed job's lost coordinator: "
        f"{FOLLOW_RETRY_S:g})",
    )
    add_argument(
        "--token-file",
        metavar="FILE",
        default=default(None),
        help="file holding your token, sent with every call (default: $TUNEFLEET_TOKEN, else "
        "the file in $TUNEFLEET_TOKEN_FILE). There is no flag taking the token itself: "
        "`ps` and shell history would show it",
    )
    add_argument(
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


def seconds_arg(text: str) -> float:
    """An argparse type: seconds, 0 or more (inf: no limit). NaN compares false with every
    deadline, so it would mean "retry forever" in silence: refused with the flag."""
    value = float(text)  # ValueError: argparse says "invalid float value"
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds, 0 or more, got {text}")
    return value


seconds_arg.__name__ = "seconds"


def coordinator_arg(text: str) -> str:
    """An argparse type: HOST:PORT, refused at once when malformed (a URL, no port) rather
    than after --connect-timeout of "cannot reach" (see tunefleet.transport.target_problem)."""
    problem = target_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


INT32 = int_in(-(2**31), 2**31 - 1)
INT64 = int_in(-(2**63), 2**63 - 1)


class Commands:
    """The sub-command table each noun module adds its commands to (`register(commands)`)."""

    def __init__(self, parser: argparse.ArgumentParser):
        self._sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        self,
        name: str,
        run: Run,
        help: str,
        *,
        exit_codes: bool = False,
        flags: tuple[str, ...] = GLOBAL_FLAGS,
    ) -> argparse.ArgumentParser:
        """A command `name` that calls `run(args)`; exit_codes: its --help lists them.

        flags: the global flags the command uses, so its --help shows only those: all of
        them for a command that talks to a coordinator, () for one that does not
        (`validate`, `run`...). A global flag given before such a command is accepted and
        ignored, as before."""
        parent = argparse.ArgumentParser(add_help=False)
        add_global_flags(parent, in_command=True, only=flags)
        parser = self._sub.add_parser(
            name,
            parents=[parent],
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


def client(args, *, follow: bool = False, poll: bool = False) -> Client:
    """The SDK client for a command. One-shot commands give up after --connect-timeout;
    follow=True (a followed job) keeps reconnecting a lost coordinator for FOLLOW_RETRY_S,
    and so does poll=True (a followed sweep, which polls with unary calls). Either way the
    first failed try says at once, on stderr, that it is waiting."""
    timeout = args.connect_timeout
    follow = follow or poll
    stream_timeout = max(timeout, FOLLOW_RETRY_S) if follow else timeout

    def waiting(target: str, give_up_s: float) -> None:
        following = follow and give_up_s > timeout
        then = "; Ctrl-C stops following, the job keeps running" if following else ""
        note(f"waiting for coordinator at {target}... (retrying for up to {give_up_s:g} s{then})")

    return Client(
        args.coordinator,
        channel_options=connect_attempt_options(timeout),
        retry=RetryPolicy(
            max_elapsed_s=stream_timeout if poll else timeout,
            stream_max_elapsed_s=stream_timeout,
        ),
        security=security(args),
        on_unavailable=waiting,
    )


def connect_attempt_options(connect_timeout_s: float) -> list[tuple[str, int]]:
    """gRPC gives one connection attempt at least 20 s (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
    which sets the minimum connect timeout, not the backoff): a coordinator that accepts
    TCP but never answers (stopped, hung, or another service on the port) held a one-shot
    command for 20 s whatever --connect-timeout said. Half of it lets a second try and the
    "waiting for" note fit in; never more than gRPC's own 20 s."""
    attempt_s = min(max(connect_timeout_s / 2, 0.1), 20.0)
    return [("grpc.min_reconnect_backoff_ms", int(attempt_s * 1000))]


def coordinator_flag(args) -> str:
    """The connection flags the user gave, to repeat in printed hints: a hint copied without
    its --token-file or --tls-ca answered "authentication required" or failed the handshake."""
    given = (
        ("--coordinator", args.coordinator),
        ("--token-file", getattr(args, "token_file", None)),
        ("--tls-ca", getattr(args, "tls_ca", None)),
    )
    return "".join(f" {flag} {shlex.quote(str(value))}" for flag, value in given if value)


def state_exit_code(state: JobState) -> int:
    return {JobState.SUCCEEDED: EXIT_OK, JobState.CANCELLED: EXIT_CANCELLED}.get(state, EXIT_FAILED)


# --- output ---------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    """A reader (or an interrupted ftctl) never leaves a half-written file: temp, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TunefleetError(f"cannot write {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def upload_bar() -> Iterator[Callable[[UploadProgress], None] | None]:
    """While a submit uploads local files: a bar on stderr (a terminal only; it goes when
    the upload ends, and the submit's note says what was sent). Yields the SDK's
    `upload_progress` callback, or None."""
    console = stderr()
    if not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("uploading {task.fields[file]}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = None

        def update(p: UploadProgress) -> None:
            nonlocal task
            name = printable(Path(p.file).name)
            if task is None:
                task = bar.add_task("upload", total=p.total, file=name)
            bar.update(task, completed=p.done, file=name)

        yield update


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


def json_text(value: Any) -> str:
    """`--json` output: a NaN or infinite figure (a diverged loss) is written as null, since
    JSON has no such numbers and parsers other than Python's refuse `NaN` / `Infinity`."""
    return json.dumps(_finite(value), indent=2, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def print_problems(source: str, errors, console: Console) -> None:
    n = len(errors)
    source = printable(source)
    console.print(Text(f"invalid: {source} ({n} problem{'s' if n != 1 else ''})", style="red"))
    for e in errors:  # they quote what the user wrote
        line = f"  {e.path}: {e.message}" if e.path else f"  {e.message}"
        console.print(Text(printable(line)))

"""`ftctl server`: the coordinator in the foreground. Its flags and the server itself are
tunefleet.coordinator.command_line's, shared with `python -m tunefleet.coordinator`."""

from __future__ import annotations

from tunefleet.client.cli.common import EXIT_OK, Commands
from tunefleet.client.errors import TunefleetError
from tunefleet.coordinator.command_line import (
    add_server_arguments,
    check_server_arguments,
    serve_from_args,
)


def register(commands: Commands) -> None:
    p = commands.add("server", run_server, "run the coordinator in the foreground", flags=())
    add_server_arguments(p)


def run_server(args) -> int:
    try:
        security = check_server_arguments(args)
        serve_from_args(args, security)
    except (RuntimeError, ValueError) as e:  # a bad flag, cannot bind, malformed --listen
        raise TunefleetError(str(e)) from None
    return EXIT_OK

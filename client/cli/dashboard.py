"""`ftctl dashboard`: the web dashboard (tunefleet.client.dashboard), an SDK client of the
coordinator served to browsers; `ftctl up` starts one too (`start_for_up`)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from tunefleet.client.cli.common import EXIT_OK, Commands, note, security, stderr
from tunefleet.client.errors import TunefleetError

DEFAULT_LISTEN = "127.0.0.1:8080"
INSTALL_HINT = "pip install 'tunefleet[dashboard]'"


def register(commands: Commands) -> None:
    # No --token-file: each browser logs in with its own token (the dashboard lends none).
    p = commands.add(
        "dashboard",
        dashboard,
        "serve the web dashboard (jobs, curves, sweeps, workers)",
        flags=("--coordinator", "--tls-ca"),
    )
    add_listen(p, "--listen")
    p.add_argument(
        "--https-cert",
        metavar="PEM",
        help="serve HTTPS with this certificate (required to listen off loopback)",
    )
    p.add_argument("--https-key", metavar="PEM", help="the key of --https-cert")


def add_listen(parser, flag: str) -> None:
    parser.add_argument(
        flag,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where the dashboard serves browsers (default: {DEFAULT_LISTEN}, this machine only)",
    )


def _check_installed() -> None:
    from tunefleet.client.dashboard import missing_dependencies

    missing = missing_dependencies()
    if missing:
        raise TunefleetError(f"the dashboard needs {', '.join(missing)}: {INSTALL_HINT}")


def dashboard(args) -> int:
    from tunefleet.client.dashboard import DashboardServer

    _check_installed()
    try:
        server = DashboardServer(
            args.listen,
            coordinator=args.coordinator,
            security=security(args),
            tls_cert=args.https_cert,
            tls_key=args.https_key,
        )
    except ValueError as e:
        raise TunefleetError(str(e)) from None
    stderr().print(
        Text(f"dashboard on {server.url}/ (coordinator {server.coordinator}); Ctrl-C stops it")
    )
    try:
        server.serve_forever()
    except RuntimeError as e:  # cannot bind
        raise TunefleetError(str(e)) from None
    return EXIT_OK


def start_for_up(listen: str, coordinator: str, tls_ca: str | None):
    """`ftctl up`'s dashboard on a thread, or None (said on stderr) when the extra is not
    installed or the port is taken: the cluster itself still comes up."""
    from tunefleet.client.dashboard import DashboardServer, missing_dependencies
    from tunefleet.transport import ChannelSecurity

    if missing_dependencies():
        note(f"no dashboard: {INSTALL_HINT} to get one")
        return None
    try:
        security = ChannelSecurity(tls=tls_ca is not None, ca_file=Path(tls_ca) if tls_ca else None)
        return DashboardServer(listen, coordinator=coordinator, security=security).start()
    except (RuntimeError, ValueError) as e:
        note(f"no dashboard: {e}")
        return None

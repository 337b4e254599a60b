"""`ftctl up`: a coordinator and one local worker in the foreground (LocalCluster, from
tunefleet.client.local), with the coordinator's TLS and token flags
(tunefleet.coordinator.command_line)."""

from __future__ import annotations

import signal
import time

from rich.text import Text

from tunefleet.client.cli import dashboard
from tunefleet.client.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    error,
    int_in,
    seconds_arg,
    stderr,
    stdout,
)
from tunefleet.client.errors import TunefleetError
from tunefleet.coordinator.command_line import (
    add_security_arguments,
    check_db_path,
    security_from_args,
)
from tunefleet.defaults import DEFAULT_ADDRESS, DEFAULT_ARTIFACTS, DEFAULT_DB_PATH, ENV_COORDINATOR


def register(commands: Commands) -> None:
    p = commands.add(
        "up",
        up,
        "run a coordinator and one local worker in the foreground",
        flags=("--tls-ca",),  # the CA the local worker trusts, with --tls-cert
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help="where the coordinator serves; this machine only (default: %(default)s)",
    )
    p.add_argument(
        "--db",
        default=DEFAULT_DB_PATH,
        metavar="PATH",
        help="the coordinator's SQLite database: jobs and events (default: %(default)s)",
    )
    p.add_argument(
        "--artifacts",
        default=DEFAULT_ARTIFACTS,
        metavar="DIR",
        help="where the local worker writes jobs' outputs (default: %(default)s)",
    )
    p.add_argument(
        "--gpus", type=int_in(0, 2**31 - 1), help="GPUs the worker offers (default: all detected)"
    )
    p.add_argument(
        "--worker-timeout",
        type=seconds_arg,
        default=120.0,
        metavar="S",
        help="give up if the worker has not registered after S seconds",
    )
    add_security_arguments(p, local_worker=True)
    dashboard.add_listen(p, "--dashboard")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the web dashboard")
    p.add_argument(
        "--allowed-root",
        action="append",
        metavar="DIR",
        help="confine the local worker's job paths to this folder (repeatable)",
    )


class _Stop(Exception):
    """Raised from a SIGTERM handler so `ftctl up` unwinds like on Ctrl-C."""


def _raise_stop(signum, frame):
    raise _Stop()


def up(args) -> int:
    from tunefleet.client.local import LocalCluster
    from tunefleet.transport import is_loopback

    err = stderr()
    host = args.listen.rpartition(":")[0]
    if not is_loopback(host):
        raise TunefleetError(
            f"ftctl up serves this machine only (loopback), not {host or 'all interfaces'}; "
            "for a cluster run `ftctl server` and `ftctl worker`"
        )
    try:
        security = security_from_args(args)
    except ValueError as e:
        raise TunefleetError(str(e)) from None
    if security["tls"] is not None and not args.tls_ca:
        raise TunefleetError("with --tls-cert, give --tls-ca: the CA the local worker trusts")
    _check_db_path(args.db)
    cluster = LocalCluster(
        listen=args.listen,
        db_path=args.db,
        artifacts=args.artifacts,
        gpus=args.gpus,
        tls_ca=args.tls_ca if security["tls"] is not None else None,
        allowed_roots=tuple(args.allowed_root or ()),
        **security,
    )
    signal.signal(signal.SIGTERM, _raise_stop)
    dash = None
    try:
        try:
            cluster.start(wait=False)
        except (RuntimeError, ValueError) as e:  # cannot bind, malformed --listen
            raise TunefleetError(str(e)) from None
        addr = cluster.address
        tls_ca = str(args.tls_ca) if security["tls"] is not None else None
        dash = None if args.no_dashboard else dashboard.start_for_up(args.dashboard, addr, tls_ca)
        stdout().print(
            Text(
                f"tunefleet is up: coordinator {addr} (db {cluster.db_path}), "
                f"worker {cluster.worker_id} (artifacts {cluster.artifacts})\n"
                f"  export {ENV_COORDINATOR}={addr}\n"
                f"  ftctl submit job.yaml --follow{'' if addr == DEFAULT_ADDRESS else ' --coordinator ' + addr}"
                f"{_credentials_hint(args, security)}\n"
                + (f"  dashboard: {dash.url}/\n" if dash else "")
                + ("Ctrl-C stops them all." if dash else "Ctrl-C stops both.")
            )
        )
        cluster.wait_for_worker(timeout=args.worker_timeout)
        err.print(Text(f"worker {cluster.worker_id} registered"))
        while (code := cluster.worker_exit_code()) is None:
            time.sleep(0.5)
        error(f"the local worker exited with code {code}; stopping")
        return EXIT_FAILED
    except (KeyboardInterrupt, _Stop):
        err.print(Text("stopping the worker and the coordinator..."))
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if dash is not None:
            dash.stop()
        cluster.stop()


def _check_db_path(db: str) -> None:
    try:  # as `ftctl server` checks it
        check_db_path(db)
    except ValueError as e:
        raise TunefleetError(str(e)) from None


def _credentials_hint(args, security: dict) -> str:
    flags = ""
    if security["tls"] is not None:
        flags += f" --tls-ca {args.tls_ca}"
    if security["tokens"] is not None:
        flags += " --token-file YOUR_TOKEN_FILE"
    return flags

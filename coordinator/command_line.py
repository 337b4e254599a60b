"""The coordinator's command line, defined once.

`python -m tunefleet.coordinator` and `ftctl server` both build their parser with
`add_server_arguments` and run the server with `serve_from_args`, so their flags cannot
drift apart (tests/client/test_client_cli_layout.py compares the two parsers); `ftctl up`
takes the TLS and token flags from `add_security_arguments`. Each entry point only
decides how it reports a bad value: `python -m tunefleet.coordinator` as a usage error
(exit 2), `ftctl` as its one-line `error:` (exit 1).

Building a parser imports nothing but this module: the server loads when it starts, so
every other `ftctl` command stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from tunefleet.defaults import DEFAULT_ADDRESS, DEFAULT_DB_PATH
from tunefleet.logging_setup import LOG_FORMATS, configure_command_logging

__all__ = [
    "add_security_arguments",
    "add_server_arguments",
    "check_server_arguments",
    "security_from_args",
    "serve_from_args",
]


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of a coordinator run in the foreground."""
    parser.add_argument(
        "--listen",
        default=DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help="where clients and workers connect; an address beyond loopback needs TLS and "
        "--tokens, or --insecure (default: %(default)s)",
    )
    parser.add_argument(
        "--db",
        default=DEFAULT_DB_PATH,
        metavar="PATH",
        help="the SQLite database (jobs, events, workers), on a local disk, not NFS; "
        "created with its folder (default: %(default)s, relative to the working directory)",
    )
    parser.add_argument(
        "--storage-uri",
        default=os.environ.get("TUNEFLEET_STORAGE_URI", ""),
        metavar="URL",
        help="object storage clients upload a job's local files to, e.g. s3://bucket/inputs "
        "(default: $TUNEFLEET_STORAGE_URI; none: jobs name paths the workers see)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (default: off)",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", metavar="HOST", help="(default: %(default)s)"
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
        help="a worker silent this long is lost and its job requeued (default: %(default)s)",
    )
    parser.add_argument(
        "--max-followers",
        type=int,
        default=256,
        metavar="N",
        help="event streams (ftctl logs -f, SDK follows) served at once, each on a thread "
        "of their own pool; one more is refused (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text, or one JSON object per line (default: text)",
    )
    add_security_arguments(parser)
    parser.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="mutual TLS: require every connection (workers and users alike) to present a "
        "certificate signed by this CA",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --listen without TLS and tokens (a trusted network only)",
    )


def add_security_arguments(parser: argparse.ArgumentParser, *, local_worker: bool = False) -> None:
    """--tls-cert, --tls-key and --tokens (local_worker: the tokens bind `ftctl up`'s own
    worker too)."""
    who = "the local worker and" if local_worker else ""
    parser.add_argument(
        "--tls-cert", metavar="PEM", help="the coordinator's certificate chain: serve TLS only"
    )
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument(
        "--tokens",
        metavar="FILE",
        help=f"require a token from {who} every caller: a YAML/JSON list of "
        "{name, role: admin|user|worker, token_sha256} (make them with `ftctl token`). "
        "Default: $TUNEFLEET_TOKENS (the list itself) or $TUNEFLEET_TOKENS_FILE; none = "
        "no authentication, and then only loopback addresses are served",
    )


def security_from_args(args: argparse.Namespace) -> dict:
    """start_server's tls= and tokens= from --tls-cert/--tls-key/--tls-client-ca/--tokens
    (or $TUNEFLEET_TOKENS / $TUNEFLEET_TOKENS_FILE); ValueError naming the flag."""
    from tunefleet.coordinator.auth import TokenTable
    from tunefleet.coordinator.server import ServerTls

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("give both --tls-cert and --tls-key, or neither")
    client_ca = getattr(args, "tls_client_ca", None)
    if client_ca and not args.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    tls = ServerTls(Path(args.tls_cert), Path(args.tls_key), client_ca) if args.tls_cert else None
    tokens = TokenTable.from_file(args.tokens) if args.tokens else TokenTable.from_env()
    return {"tls": tls, "tokens": tokens}


def check_server_arguments(args: argparse.Namespace) -> dict:
    """The security options (see security_from_args) once every flag checks out;
    ValueError naming the flag otherwise."""
    from tunefleet.coordinator.server import check_lease_settings, check_storage_uri
    from tunefleet.transport import MAX_PORT

    security = security_from_args(args)
    check_lease_settings(args.heartbeat_s, args.lease_s)
    check_storage_uri(args.storage_uri)
    if args.metrics_port is not None and not 0 <= args.metrics_port <= MAX_PORT:
        raise ValueError(
            f"--metrics-port must be 0-{MAX_PORT} (0: any free port), got {args.metrics_port}"
        )
    check_db_path(args.db)
    return security


def check_db_path(db: str) -> None:
    """SQLite says only "unable to open database file" (an internal error, once) for a
    --db that is a folder or lies below a file: ValueError with the flag and a fix."""
    path = Path(db)
    if path.is_dir():
        raise ValueError(
            f"--db {db}: is a folder; give the database file's path, e.g. {path / 'coordinator.db'}"
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--db {db}: {parent} is a file, not a folder")
            return


def serve_from_args(args: argparse.Namespace, security: dict) -> None:
    """Runs the coordinator the flags describe until SIGINT or SIGTERM; RuntimeError or
    ValueError when it cannot start (cannot bind, malformed --listen, exposure refused)."""
    from tunefleet.coordinator.server import serve

    folder = Path(args.db).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--db {args.db}: cannot create {folder}: {exc.strerror or exc}") from None
    configure_command_logging("INFO", args.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        serve(
            args.listen,
            args.db,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            insecure=args.insecure,
            heartbeat_interval_s=args.heartbeat_s,
            lease_timeout_s=args.lease_s,
            max_followers=args.max_followers,
            storage_uri=args.storage_uri,
            announce=args.log_format != "json",
            **security,
        )

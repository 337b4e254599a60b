"""`python -m tunefleet.worker --coordinator HOST:PORT`: run a worker until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from tunefleet.defaults import DEFAULT_ARTIFACTS, ENV_COORDINATOR
from tunefleet.logging_setup import LOG_FORMATS, configure_logging
from tunefleet.transport import ChannelSecurity, is_loopback, split_host
from tunefleet.worker.artifact_store import ArtifactStore, ArtifactStoreError
from tunefleet.worker.daemon import WorkerDaemon
from tunefleet.worker.path_policy import ENV_ALLOWED_ROOTS, roots_from_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunefleet.worker",
        description="Run a tunefleet worker: take jobs from the coordinator and train them.",
    )
    parser.add_argument(
        "--coordinator",
        default=os.environ.get(ENV_COORDINATOR),
        help="HOST:PORT of the coordinator (default: $TUNEFLEET_COORDINATOR)",
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path(DEFAULT_ARTIFACTS),
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
    parser.add_argument(
        "--drain-grace-s",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, how long a running job has to checkpoint and stop before it "
        "is killed; the job is released to run elsewhere (default: %(default)s; a second "
        "signal kills at once)",
    )
    parser.add_argument(
        "--address",
        default=None,
        metavar="HOST",
        help="where the other workers of a multi-node job reach this one (default: "
        "$TUNEFLEET_WORKER_ADDRESS, else this host's IP on its route to the coordinator)",
    )
    parser.add_argument(
        "--min-free-mb",
        type=float,
        default=100.0,
        help="after its --artifacts disk filled up (the job is released, the worker shows as "
        "unhealthy), take jobs again once this much is free there (default: %(default)s)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="json: one object per line"
    )
    parser.add_argument(
        "--artifacts-uri",
        default=os.environ.get("TUNEFLEET_ARTIFACTS_URI") or None,
        metavar="URL",
        help="upload succeeded jobs' final artifacts to this fsspec URL, e.g. s3://bucket/prefix "
        "(default: $TUNEFLEET_ARTIFACTS_URI; none: artifacts stay under --artifacts)",
    )
    add_security_arguments(parser)
    args = parser.parse_args(argv)
    if not args.coordinator:
        parser.error("--coordinator HOST:PORT is required (or set TUNEFLEET_COORDINATOR)")
    if args.gpus is not None and args.gpus < 0:
        parser.error(f"--gpus must be >= 0, got {args.gpus}")
    if args.poll_s <= 0:
        parser.error(f"--poll-s must be > 0, got {args.poll_s}")
    if args.min_free_mb < 0:
        parser.error(f"--min-free-mb must be >= 0, got {args.min_free_mb}")
    if args.drain_grace_s < 0:
        parser.error(f"--drain-grace-s must be >= 0, got {args.drain_grace_s}")
    configure_logging(args.log_level, args.log_format)
    try:
        security = security_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    allowed_roots = allowed_roots_from_args(args)
    if args.artifacts_uri:
        try:  # fail now, with the reason, rather than after the first job trained
            ArtifactStore(args.artifacts_uri)
        except ArtifactStoreError as exc:
            parser.error(f"--artifacts-uri: {exc}")
    daemon = WorkerDaemon(
        args.coordinator,
        artifacts_root=args.artifacts,
        work_root=args.work_dir,
        gpus=args.gpus,
        worker_id=args.worker_id,
        poll_s=args.poll_s,
        artifacts_uri=args.artifacts_uri,
        security=security,
        allowed_roots=allowed_roots,
        drain_grace_s=args.drain_grace_s,
        address=args.address,
        min_free_bytes=int(args.min_free_mb * 1024 * 1024),
    )

    def on_signal(signum, _frame):
        daemon.stop()  # safe in a signal handler: drains; a second signal kills the job

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.run()
    return 0


def add_security_arguments(parser: argparse.ArgumentParser, *, tls_ca: bool = True) -> None:
    """The worker's TLS, token and path-confinement flags (shared with `ftctl worker`,
    where --tls-ca and --token-file are global flags: tls_ca=False)."""
    if tls_ca:
        parser.add_argument(
            "--token-file",
            metavar="FILE",
            help="file holding this worker's token (default: $TUNEFLEET_TOKEN, else "
            "$TUNEFLEET_TOKEN_FILE)",
        )
        parser.add_argument(
            "--tls-ca",
            metavar="PEM",
            help="CA that signed the coordinator's certificate; turns TLS on "
            "(default: $TUNEFLEET_TLS_CA)",
        )
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="this worker's certificate, for mutual TLS (default: $TUNEFLEET_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key", metavar="PEM", help="the key of --tls-cert (default: $TUNEFLEET_TLS_KEY)"
    )
    parser.add_argument(
        "--allowed-root",
        action="append",
        metavar="DIR",
        help="job data, model, checkpoint and output paths must lie in this folder "
        "(repeatable; after resolving .. and symlinks; --artifacts is always allowed); "
        f"a job that strays is FAILED before it starts. Default: ${ENV_ALLOWED_ROOTS} "
        "(os.pathsep-separated); none = unrestricted, fine for a single-user machine only",
    )


def security_from_args(args: argparse.Namespace) -> ChannelSecurity:
    """Flags first, then $TUNEFLEET_TOKEN / _TOKEN_FILE / _TLS_CA / _TLS_CERT / _TLS_KEY."""
    return ChannelSecurity.resolve(
        token_file=args.token_file,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def allowed_roots_from_args(args: argparse.Namespace) -> list[str]:
    roots = args.allowed_root if args.allowed_root else roots_from_env()
    if not roots and not is_loopback(split_host(args.coordinator)):
        logging.getLogger("tunefleet.worker").warning(
            "no --allowed-root: jobs from %s may read and write any path this user can",
            args.coordinator,
        )
    return roots


if __name__ == "__main__":
    sys.exit(main())

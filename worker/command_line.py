"""The worker daemon's command line, defined once.

`python -m tunefleet.worker` and `ftctl worker` both build their parser with
`add_worker_arguments` and start the daemon with `daemon_from_args` and
`run_until_signalled`, so their flags cannot drift apart (tests/client/test_client_cli_layout.py
compares the two parsers). Each entry point only decides how it reports a bad value:
`python -m tunefleet.worker` as a usage error (exit 2), `ftctl` as its one-line `error:`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from tunefleet import limits
from tunefleet.defaults import DEFAULT_ARTIFACTS, ENV_COORDINATOR
from tunefleet.logging_setup import LOG_FORMATS, LOG_LEVELS
from tunefleet.transport import (
    ChannelSecurity,
    is_loopback,
    split_host,
    target_problem,
)
from tunefleet.worker.artifact_store import ArtifactStore, ArtifactStoreError
from tunefleet.worker.daemon import WorkerDaemon
from tunefleet.worker.input_cache import DEFAULT_CACHE_MAX_GB
from tunefleet.worker.path_policy import ENV_ALLOWED_ROOTS, roots_from_env

__all__ = [
    "WorkerFlagError",
    "add_worker_arguments",
    "allowed_roots_from_args",
    "check_worker_arguments",
    "daemon_from_args",
    "feature_cache_env",
    "run_until_signalled",
    "security_from_args",
]


ENV_INPUT_CACHE_MAX_GB = "TUNEFLEET_INPUT_CACHE_MAX_GB"


class WorkerFlagError(ValueError):
    """A flag's value cannot work; the message names the flag."""


def add_worker_arguments(parser: argparse.ArgumentParser, *, connection: bool = True) -> None:
    """Every flag of the worker daemon. connection=False leaves out --coordinator,
    --token-file and --tls-ca, which `ftctl` takes as global flags for every command."""
    if connection:
        parser.add_argument(
            "--coordinator",
            default=os.environ.get(ENV_COORDINATOR),
            metavar="HOST:PORT",
            help="HOST:PORT of the coordinator (default: $TUNEFLEET_COORDINATOR)",
        )
    parser.add_argument(
        "--artifacts",
        default=DEFAULT_ARTIFACTS,
        metavar="DIR",
        help="folder for job outputs without output.dir (default: %(default)s)",
    )
    parser.add_argument("--work-dir", metavar="DIR", help="working directory of training processes")
    parser.add_argument("--gpus", type=int, help="GPUs to offer (default: all detected)")
    parser.add_argument("--id", help="stable worker id (default: assigned by the coordinator)")
    parser.add_argument(
        "--poll-s",
        type=float,
        default=5.0,
        metavar="S",
        help="AcquireJob long-poll seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--drain-grace-s",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM/SIGINT, how long a running job has to checkpoint and stop before it "
        "is killed; the job is released to run elsewhere (default: %(default)s; a second "
        "signal kills at once)",
    )
    parser.add_argument(
        "--address",
        metavar="HOST",
        help="where other machines of a multi-node job reach this one as rank 0 "
        "(default: $TUNEFLEET_WORKER_ADDRESS, else this host's IP on the route to the "
        "coordinator)",
    )
    parser.add_argument(
        "--min-free-mb",
        type=float,
        default=100.0,
        metavar="MB",
        help="after its --artifacts disk filled up (the job is released, the worker shows as "
        "unhealthy), take jobs again once this much is free there (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING... (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text, or one JSON object per line (default: text)",
    )
    parser.add_argument(
        "--artifacts-uri",
        default=os.environ.get("TUNEFLEET_ARTIFACTS_URI") or None,
        metavar="URL",
        help="also upload succeeded jobs' final artifacts, and running jobs' checkpoints (a "
        "job requeued to another host resumes from them), to this fsspec URL, e.g. "
        "s3://bucket/prefix (default: $TUNEFLEET_ARTIFACTS_URI; none: artifacts stay under "
        "--artifacts)",
    )
    parser.add_argument(
        "--feature-cache-dir",
        metavar="DIR",
        help="where jobs share frozen-layer features computed once for the same model, data "
        "and frozen blocks, e.g. a sweep's trials (default: --work-dir/feature-cache, else "
        "--artifacts/.feature-cache)",
    )
    parser.add_argument(
        "--feature-cache-max-gb",
        type=float,
        default=10.0,
        metavar="GB",
        help="size bound of --feature-cache-dir; least recently used entries go first "
        "(default: %(default)s; 0 turns sharing off)",
    )
    parser.add_argument(
        "--no-warm-engine",
        dest="warm_engine",
        action="store_false",
        help="start every training process fresh; by default a single-process job runs in a "
        "process forked from a warm engine host that has imported torch, transformers and "
        "accelerate once (saves seconds per job, e.g. a sweep's trials; costs the host's "
        "memory while the worker runs)",
    )
    parser.add_argument(
        "--input-cache-dir",
        default=os.environ.get("TUNEFLEET_INPUT_CACHE_DIR") or None,
        metavar="DIR",
        help="local copies of the data and models jobs name by URL (s3://, gs://, hf://...), "
        "shared by jobs and by workers pointed at the same folder "
        "(default: $TUNEFLEET_INPUT_CACHE_DIR, else ARTIFACTS/.input-cache)",
    )
    parser.add_argument(
        "--input-cache-max-gb",
        type=float,
        metavar="GB",
        help="the cache's size bound; least recently used copies go first (default: "
        f"${ENV_INPUT_CACHE_MAX_GB}, else {DEFAULT_CACHE_MAX_GB})",
    )
    add_security_arguments(parser, tls_ca=connection)


def add_security_arguments(parser: argparse.ArgumentParser, *, tls_ca: bool = True) -> None:
    """The worker's TLS, token and path-confinement flags (tls_ca=False: --tls-ca and
    --token-file are the caller's own, as in `ftctl`)."""
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


def check_worker_arguments(args: argparse.Namespace) -> None:
    """Raises WorkerFlagError for a value no worker can run with."""
    problem = target_problem(args.coordinator or "")
    if problem:
        raise WorkerFlagError(f"--coordinator: {problem}")
    if args.gpus is not None and args.gpus < 0:
        raise WorkerFlagError(f"--gpus must be >= 0, got {args.gpus}")
    if args.poll_s <= 0:
        raise WorkerFlagError(f"--poll-s must be > 0, got {args.poll_s}")
    if args.min_free_mb < 0:
        raise WorkerFlagError(f"--min-free-mb must be >= 0, got {args.min_free_mb}")
    if args.feature_cache_max_gb < 0:
        raise WorkerFlagError(
            f"--feature-cache-max-gb must be >= 0, got {args.feature_cache_max_gb}"
        )
    if args.drain_grace_s < 0:
        raise WorkerFlagError(f"--drain-grace-s must be >= 0, got {args.drain_grace_s}")
    if args.id is not None and not limits.is_safe_name(args.id, limits.MAX_WORKER_ID_CHARS):
        # The coordinator refuses it at every registration, which the daemon would retry
        # for ever: a unit file's typo has to stop here, with the rule.
        raise WorkerFlagError(
            f"--id {limits.quote(args.id)}: at most {limits.MAX_WORKER_ID_CHARS} characters, "
            f"{limits.NAME_RULE}"
        )
    if str(args.log_level).upper() not in LOG_LEVELS:
        raise WorkerFlagError(
            f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {args.log_level!r}"
        )
    args.input_cache_max_gb = input_cache_max_gb(args)
    if args.input_cache_max_gb <= 0:
        raise WorkerFlagError(f"--input-cache-max-gb must be > 0, got {args.input_cache_max_gb}")


def input_cache_max_gb(args: argparse.Namespace) -> float:
    """--input-cache-max-gb, else $TUNEFLEET_INPUT_CACHE_MAX_GB, else the default. Read
    here, not as the parser's default: a malformed variable must not break every command
    that builds the parser (all of ftctl's, `ftctl validate` included)."""
    if args.input_cache_max_gb is not None:
        return args.input_cache_max_gb
    value = os.environ.get(ENV_INPUT_CACHE_MAX_GB) or str(DEFAULT_CACHE_MAX_GB)
    try:
        return float(value)
    except ValueError:
        raise WorkerFlagError(
            f"${ENV_INPUT_CACHE_MAX_GB} must be a number of GB, got {value!r}"
        ) from None


def daemon_from_args(args: argparse.Namespace) -> WorkerDaemon:
    """The daemon the flags describe (`args.coordinator` resolved by the caller); raises
    WorkerFlagError for credentials it cannot load or an --artifacts-uri it cannot use."""
    try:
        security = security_from_args(args)
    except ValueError as exc:
        raise WorkerFlagError(str(exc)) from None
    allowed_roots = allowed_roots_from_args(args)
    if args.artifacts_uri:
        try:  # fail now, with the reason, rather than after the first job trained
            ArtifactStore(args.artifacts_uri).check_reachable()
        except ArtifactStoreError as exc:
            raise WorkerFlagError(f"--artifacts-uri: {exc}") from None
    for flag, folder in (
        ("--artifacts", args.artifacts),
        ("--work-dir", args.work_dir),
        ("--input-cache-dir", args.input_cache_dir),
    ):
        if not folder:
            continue
        try:  # now, with the flag's name, rather than every job failing on a missing folder
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkerFlagError(
                f"{flag}: cannot create {folder}: {exc.strerror or exc}"
            ) from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise WorkerFlagError(f"{flag}: {folder} is not writable by this user")
    try:  # the channel is opened here: unusable TLS files are named now
        return _daemon(args, security, allowed_roots)
    except ValueError as exc:
        raise WorkerFlagError(str(exc)) from None


def _daemon(args: argparse.Namespace, security: ChannelSecurity, allowed_roots) -> WorkerDaemon:
    return WorkerDaemon(
        args.coordinator,
        artifacts_root=Path(args.artifacts),
        work_root=Path(args.work_dir) if args.work_dir else None,
        gpus=args.gpus,
        worker_id=args.id,
        poll_s=args.poll_s,
        artifacts_uri=args.artifacts_uri,
        cache_dir=Path(args.input_cache_dir) if args.input_cache_dir else None,
        cache_max_bytes=int(input_cache_max_gb(args) * 1024**3),
        security=security,
        allowed_roots=allowed_roots,
        drain_grace_s=args.drain_grace_s,
        address=args.address,
        min_free_bytes=int(args.min_free_mb * 1024 * 1024),
        engine_env=feature_cache_env(args),
        warm_engine=args.warm_engine,
    )


def feature_cache_env(args: argparse.Namespace) -> dict[str, str]:
    """What tells the training processes where jobs share frozen features (read by
    worker/engine/shared_features.py): --feature-cache-dir, else --work-dir/feature-cache,
    else --artifacts/.feature-cache; nothing when --feature-cache-max-gb is 0."""
    if args.feature_cache_max_gb <= 0:
        return {}
    folder = args.feature_cache_dir or (
        Path(args.work_dir) / "feature-cache"
        if args.work_dir
        else Path(args.artifacts) / ".feature-cache"
    )
    return {
        "TUNEFLEET_FEATURE_CACHE_DIR": str(Path(folder).resolve()),
        "TUNEFLEET_FEATURE_CACHE_MAX_GB": str(args.feature_cache_max_gb),
    }


def run_until_signalled(daemon: WorkerDaemon) -> None:
    """Runs the daemon; SIGTERM or SIGINT drains it (a second one kills the job)."""

    # stop() is signal-safe and reports a running job before run() returns, which a
    # KeyboardInterrupt raised at a random point inside run() would not.
    def on_signal(signum, _frame):
        daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.run()


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
    for root in roots:
        if not Path(root).is_dir():
            # A typo here refuses every job's paths, with a reason that names the job's
            # path, not this flag: say it once, now (a mount may still be on its way).
            logging.getLogger("tunefleet.worker").warning(
                "--allowed-root %s: no such folder; job paths under it are refused until it exists",
                root,
            )
    return roots

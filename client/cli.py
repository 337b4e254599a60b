"""`ftctl`: the command line view of the tunefleet SDK.

Each command is a thin wrapper over one SDK call (tunefleet.client.Client) plus a
rendering from tunefleet.client.render; run/plan call the engine directly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

# gRPC core logs connection noise (GOAWAYs, reconnects, bind failures) to stderr; a CLI
# user gets our one-line errors instead. It reads this when grpc is first imported, which
# is just below (tunefleet.client itself imports lazily). GRPC_VERBOSITY=ERROR or DEBUG in
# the environment brings the core's logs back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from rich.console import Console  # noqa: E402
from rich.text import Text  # noqa: E402

from tunefleet.client.client import (  # noqa: E402
    DEFAULT_TARGET,
    ENV_TARGET,
    Client,
    RetryPolicy,
    prepare_spec,
)
from tunefleet.client.errors import TunefleetError, Unavailable, ValidationError  # noqa: E402
from tunefleet.client.render import (  # noqa: E402
    EventRenderer,
    jobs_table,
    render_job,
    render_reports,
    render_summary,
    workers_table,
)
from tunefleet.client.types import Event, Job, JobState  # noqa: E402
from tunefleet.defaults import DEFAULT_ARTIFACTS, DEFAULT_DB_PATH, DEFAULT_RUNS  # noqa: E402
from tunefleet.limits import printable  # noqa: E402
from tunefleet.transport import ChannelSecurity  # noqa: E402

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

WORKER_EXTRA_MODULES = {"torch", "torchvision", "transformers", "accelerate", "safetensors"}
WORKER_EXTRA_MODULES |= {"datasets", "numpy"}


def _stdout() -> Console:
    # soft_wrap: a long line (a path, an error) stays one line that the terminal wraps,
    # so it can be copied and grepped whole.
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 200  # tables in logs and pipes should not wrap at 80 columns
    return console


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _error(message: str) -> None:
    # Coordinator refusals quote what a user wrote: no raw control characters.
    _stderr().print(Text(printable(f"error: {message}"), style="red"))


def _note(message: str) -> None:
    _stderr().print(Text(printable(message), style="yellow"))


def _state_exit_code(state: JobState) -> int:
    return {JobState.SUCCEEDED: EXIT_OK, JobState.CANCELLED: EXIT_CANCELLED}.get(state, EXIT_FAILED)


def _security(args) -> ChannelSecurity:
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


def _client(args) -> Client:
    return Client(
        args.coordinator,
        retry=RetryPolicy(max_elapsed_s=args.connect_timeout),
        security=_security(args),
    )


def _coordinator_flag(args) -> str:
    """`--coordinator X` to repeat in printed hints, when the user gave one."""
    return f" --coordinator {args.coordinator}" if args.coordinator else ""


def _print_problems(source: str, errors, console: Console) -> None:
    n = len(errors)
    source = printable(source)
    console.print(Text(f"invalid: {source} ({n} problem{'s' if n != 1 else ''})", style="red"))
    for e in errors:  # they quote what the user wrote
        line = f"  {e.path}: {e.message}" if e.path else f"  {e.message}"
        console.print(Text(printable(line)))


# --- commands that need no coordinator ------------------------------------------------


def cmd_validate(args) -> int:
    out, err = _stdout(), _stderr()
    code = EXIT_OK
    for path in args.files:
        try:
            spec = prepare_spec(path, check_paths=not args.no_check_paths)
        except ValidationError as e:
            _print_problems(path, e.errors, err)
            code = EXIT_FAILED
            continue
        out.print(Text(printable(f"ok: {path} ({spec.name})")))
    return code


def cmd_plan(args) -> int:
    spec = prepare_spec(args.file)
    plan_table = _engine_function("tunefleet.worker.engine.plan_preview", "plan_table")
    _stdout().print(Text(plan_table(spec)))
    return EXIT_OK


def cmd_run(args) -> int:
    spec = prepare_spec(args.file)
    run_job = _engine_function("tunefleet.worker.engine", "run_job")
    out_dir = Path(args.out or spec.output.dir or Path(DEFAULT_RUNS) / spec.name).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    console = _stdout()
    renderer = EventRenderer(console, throttle_s=args.throttle)
    renderer.print(Text(f"RUNNING {spec.name} locally, writing to {out_dir}"))
    seq = 0

    def emit(msg) -> None:
        nonlocal seq
        seq += 1
        event = Event.from_proto(msg)
        renderer.handle(
            Event(spec.name, seq, event.time, 1, event.kind, event.payload)  # local: no ids
        )

    started = time.monotonic()
    try:
        result = run_job(spec, out_dir, emit, resume=not args.fresh)
    except KeyboardInterrupt:
        renderer.close()
        _note(f"interrupted; run the same command again to resume from {out_dir}")
        return EXIT_INTERRUPTED
    except Exception as e:
        renderer.close()
        invalid = _engine_invalid_input_type()
        if invalid is not None and isinstance(e, invalid):
            render_summary(console, state=JobState.FAILED, reason=str(e))
            return EXIT_FAILED
        raise
    renderer.close()
    render_summary(
        console,
        state=JobState.SUCCEEDED,
        summary=result.summary,
        artifacts=result.artifacts,
        duration_s=time.monotonic() - started,
        title=spec.name,
    )
    return EXIT_OK


def _engine_function(module: str, name: str):
    """`module.name` from the engine, or a clear error when the worker extra is missing.

    The engine package loads torch lazily on attribute access, so both steps are guarded.
    """
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        missing = (e.name or "").split(".")[0]
        if missing in WORKER_EXTRA_MODULES:
            raise TunefleetError(
                f"the training engine needs {missing}, which is not installed here: "
                "pip install 'tunefleet[worker]'"
            ) from None
        raise


def _engine_invalid_input_type():
    try:
        from tunefleet.worker.engine.errors import InvalidJobInput
    except ImportError:
        return None
    return InvalidJobInput


# --- client commands ------------------------------------------------------------------


def cmd_submit(args) -> int:
    console = _stdout()
    with _client(args) as client:
        handle = client.submit(
            args.file, priority=args.priority, idempotency_key=args.idempotency_key
        )
        job = handle.job
        assert job is not None
        if args.quiet and not args.follow:
            print(job.id)
            return EXIT_OK
        console.print(Text(f"submitted job {job.id} ({job.name}): {job.state.value}"))
        flag = _coordinator_flag(args)
        if not args.follow:
            console.print(Text(f"  follow:  ftctl logs {job.id} -f{flag}"))
            console.print(Text(f"  status:  ftctl get {job.id}{flag}"))
            console.print(Text(f"  cancel:  ftctl cancel {job.id}{flag}"))
            return EXIT_OK
        return _follow(client, job.id, 0, console, args.throttle, flag)


def _follow(client: Client, job_id: str, after_seq: int, console, throttle_s, flag="") -> int:
    renderer = EventRenderer(console, throttle_s=throttle_s)
    try:
        for event in client.events(job_id, after_seq, True):
            renderer.handle(event)
    except KeyboardInterrupt:
        renderer.close()
        _note(
            f"stopped following; job {job_id} keeps running "
            f"(ftctl logs {job_id} -f{flag} to follow again, ftctl cancel {job_id}{flag} to stop it)"
        )
        return EXIT_INTERRUPTED
    finally:
        renderer.close()
    job = client.get(job_id)
    renderer.summary(job)
    return _state_exit_code(job.state)


def cmd_logs(args) -> int:
    console = _stdout()
    with _client(args) as client:
        if args.follow:
            return _follow(client, args.job, args.after, console, args.throttle)
        with EventRenderer(console, live=False, throttle_s=0.0, show_debug=True) as renderer:
            for event in client.events(args.job, args.after, False):
                renderer.handle(event)
    return EXIT_OK


def cmd_jobs(args) -> int:
    states = [s for arg in args.state or () for s in arg.split(",") if s]
    with _client(args) as client:
        jobs = client.list(states or None, limit=args.limit)
    console = _stdout()
    if args.json:
        print(json.dumps([_job_dict(j) for j in jobs], indent=2))
    elif not jobs:
        console.print("no jobs" + (f" in state {', '.join(states)}" if states else ""))
    else:
        console.print(jobs_table(jobs))
    return EXIT_OK


def cmd_get(args) -> int:
    with _client(args) as client:
        job = client.get(args.job)
        reports = _compression_reports(client, job)
    if args.json:
        print(json.dumps(_job_dict(job, spec=True), indent=2))
    else:
        console = _stdout()
        render_job(console, job)
        render_reports(console, reports)
    return EXIT_OK


def _compression_reports(client: Client, job: Job) -> list:
    """The compression report of a finished job that compressed its model (read from its
    events, so only for such jobs: others' event streams are not fetched)."""
    from tunefleet.spec import compresses

    if not (compresses(job.spec) and job.is_terminal()):
        return []
    reports = [
        event.report
        for event in client.events(job.id, follow=False)
        if event.kind == "report" and event.report.name == "compression"
    ]
    return reports[-1:]


def cmd_cancel(args) -> int:
    with _client(args) as client:
        job = client.cancel(args.job, args.reason)
    if job.is_terminal():
        _stdout().print(Text(printable(f"job {job.id}: {job.state.value} {job.reason}".rstrip())))
    else:
        _stdout().print(Text(f"job {job.id}: cancel requested (was {job.state.value})"))
    return EXIT_OK


def cmd_workers(args) -> int:
    with _client(args) as client:
        workers = client.workers()
    console = _stdout()
    if args.json:
        print(json.dumps([_worker_dict(w) for w in workers], indent=2))
    elif not workers:
        console.print(
            f"no workers registered; start one with: ftctl worker --coordinator {client.target}"
        )
    else:
        console.print(workers_table(workers))
    return EXIT_OK


def _job_dict(job: Job, *, spec: bool = False) -> dict:
    from tunefleet.spec import spec_to_dict

    d = {
        "id": job.id,
        "name": job.name,
        "state": job.state.value,
        "reason": job.reason,
        "attempt": job.attempt,
        "restarts": job.restarts,
        "not_before": job.not_before.isoformat() if job.not_before else None,
        "worker_id": job.worker_id,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "artifacts": job.artifacts,
        "summary": job.summary,
        "last_seq": job.last_seq,
        "submitter": job.submitter,
    }
    if job.members:  # a multi-node job
        d["rendezvous"] = job.rendezvous
        d["members"] = [
            {
                "rank": m.rank,
                "worker_id": m.worker_id,
                "address": m.address,
                "state": m.state.value,
                "reason": m.reason,
            }
            for m in job.members
        ]
    if spec:
        d["spec"] = spec_to_dict(job.spec)
    return d


def _worker_dict(w) -> dict:
    return {
        "id": w.id,
        "hostname": w.hostname,
        "state": w.state,
        "gpus": w.gpus,
        "free_gpus": w.free_gpus,
        "cpus": w.cpus,
        "job_ids": list(w.job_ids),
        "last_heartbeat_age_s": w.last_heartbeat_age_s,
        "unhealthy_reason": w.unhealthy_reason,
    }


# --- processes: server, worker, up ----------------------------------------------------


class _Stop(Exception):
    """Raised from a SIGTERM handler so foreground commands unwind like on Ctrl-C."""


def _raise_stop(signum, frame):
    raise _Stop()


def _server_security(args) -> dict:
    """start_server's tls= and tokens= from --tls-cert/--tls-key/--tls-client-ca/--tokens
    (or $TUNEFLEET_TOKENS / $TUNEFLEET_TOKENS_FILE)."""
    from tunefleet.coordinator.auth import TokenTable
    from tunefleet.coordinator.server import ServerTls

    if bool(args.tls_cert) != bool(args.tls_key):
        raise TunefleetError("give both --tls-cert and --tls-key, or neither")
    client_ca = getattr(args, "tls_client_ca", None)
    if client_ca and not args.tls_cert:
        raise TunefleetError("--tls-client-ca needs --tls-cert and --tls-key")
    tls = ServerTls(Path(args.tls_cert), Path(args.tls_key), client_ca) if args.tls_cert else None
    try:
        tokens = TokenTable.from_file(args.tokens) if args.tokens else TokenTable.from_env()
    except ValueError as e:
        raise TunefleetError(str(e)) from None
    return {"tls": tls, "tokens": tokens}


def cmd_server(args) -> int:
    from tunefleet.coordinator import serve
    from tunefleet.coordinator.server import check_lease_settings

    security = _server_security(args)
    try:
        check_lease_settings(args.heartbeat_s, args.lease_s)
    except ValueError as e:
        raise TunefleetError(str(e)) from None
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    _configure_logging(args.log_format)
    try:
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
                **security,
            )
    except (RuntimeError, ValueError) as e:  # cannot bind, malformed --listen
        raise TunefleetError(str(e)) from None
    return EXIT_OK


def _drain_worker(args) -> int:
    if not args.worker_id:
        raise TunefleetError(
            "ftctl worker drain WORKER_ID: which worker? `ftctl workers` lists them"
        )
    with _client(args) as client:
        worker = client.drain_worker(args.worker_id)
    jobs = ", ".join(worker.job_ids) or "no job"
    _stdout().print(
        f"worker {worker.id} is {worker.state}: it takes no new jobs; {jobs} will checkpoint "
        "and resume elsewhere, then the worker exits"
    )
    return EXIT_OK


def cmd_worker(args) -> int:
    if args.action == "drain":
        return _drain_worker(args)
    from tunefleet.worker.__main__ import allowed_roots_from_args
    from tunefleet.worker.artifact_store import ArtifactStoreError
    from tunefleet.worker.daemon import WorkerDaemon

    target = args.coordinator or os.environ.get(ENV_TARGET) or DEFAULT_TARGET
    args.coordinator = target
    _configure_logging(args.log_format)
    try:
        daemon = WorkerDaemon(
            target,
            artifacts_root=Path(args.artifacts),
            gpus=args.gpus,
            worker_id=args.id,
            artifacts_uri=args.artifacts_uri,
            security=_security(args),
            allowed_roots=allowed_roots_from_args(args),
            address=args.address,
        )
    except ArtifactStoreError as e:
        raise TunefleetError(f"--artifacts-uri: {e}") from None
    # stop() is signal-safe and reports a running job before run() returns, which a
    # KeyboardInterrupt raised at a random point inside run() would not.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: daemon.stop())
    daemon.run()
    return EXIT_OK


def _configure_logging(log_format: str) -> None:
    from tunefleet.logging_setup import configure_logging

    if log_format == "json" or not logging.getLogger().handlers:
        configure_logging("INFO", log_format)


# --- observability: curves and artifacts ---------------------------------------------


def cmd_plot(args) -> int:
    from tunefleet.client.plot import plot_job

    with _client(args) as client:
        path = plot_job(client, args.job, args.output or f"{args.job}-curves.png")
    _stdout().print(Text(f"wrote {path}"))
    return EXIT_OK


def cmd_artifacts(args) -> int:
    from tunefleet.worker.artifact_store import ArtifactStoreError, download_job

    with _client(args) as client:
        job = client.get(args.job)
    console = _stdout()
    if not args.download:
        if not job.artifacts:
            console.print(f"job {job.id} has no artifacts ({job.state.value})")
        for name, location in sorted(job.artifacts.items()):
            console.print(Text(printable(f"{name:<24} {location}")))
        return EXIT_OK
    try:
        files = download_job(job.artifacts, Path(args.download), args.name or ())
    except ArtifactStoreError as e:
        raise TunefleetError(f"job {job.id}: {e}") from None
    for path in files:
        console.print(Text(str(path)))
    console.print(Text(f"downloaded {len(files)} files of job {job.id} to {args.download}"))
    return EXIT_OK


def cmd_up(args) -> int:
    from tunefleet.client.local import LocalCluster
    from tunefleet.transport import is_loopback

    err = _stderr()
    host = args.listen.rpartition(":")[0]
    if not is_loopback(host):
        raise TunefleetError(
            f"ftctl up serves this machine only (loopback), not {host or 'all interfaces'}; "
            "for a cluster run `ftctl server` and `ftctl worker`"
        )
    security = _server_security(args)
    if security["tls"] is not None and not args.tls_ca:
        raise TunefleetError("with --tls-cert, give --tls-ca: the CA the local worker trusts")
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
    try:
        try:
            cluster.start(wait=False)
        except (RuntimeError, ValueError) as e:  # cannot bind, malformed --listen
            raise TunefleetError(str(e)) from None
        addr = cluster.address
        _stdout().print(
            Text(
                f"tunefleet is up: coordinator {addr} (db {cluster.db_path}), "
                f"worker {cluster.worker_id} (artifacts {cluster.artifacts})\n"
                f"  export {ENV_TARGET}={addr}\n"
                f"  ftctl submit job.yaml --follow{'' if addr == DEFAULT_TARGET else ' --coordinator ' + addr}"
                f"{_up_credentials_hint(args, security)}\n"
                "Ctrl-C stops both."
            )
        )
        cluster.wait_for_worker(timeout=args.worker_timeout)
        err.print(Text(f"worker {cluster.worker_id} registered"))
        while (code := cluster.worker_exit_code()) is None:
            time.sleep(0.5)
        _error(f"the local worker exited with code {code}; stopping")
        return EXIT_FAILED
    except (KeyboardInterrupt, _Stop):
        err.print(Text("stopping the worker and the coordinator..."))
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        cluster.stop()


# --- the parser -----------------------------------------------------------------------


def _up_credentials_hint(args, security: dict) -> str:
    flags = ""
    if security["tls"] is not None:
        flags += f" --tls-ca {args.tls_ca}"
    if security["tokens"] is not None:
        flags += " --token-file YOUR_TOKEN_FILE"
    return flags


def cmd_token(args) -> int:
    from tunefleet.coordinator.auth import new_token, tokens_entry

    token = new_token()
    print(token)
    _stderr().print(
        Text(
            "Give the token above to its user (e.g. in a file for --token-file, chmod 600);\n"
            "add this entry, which holds only its hash, to the coordinator's --tokens file:\n"
            f"- {tokens_entry(args.name, args.role, token)}"
        )
    )
    return EXIT_OK


def _add_server_security(p: argparse.ArgumentParser, *, up: bool = False) -> None:
    who = "the local worker and" if up else ""
    p.add_argument(
        "--tls-cert", metavar="PEM", help="the coordinator's certificate chain: serve TLS only"
    )
    p.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument(
        "--tokens",
        metavar="FILE",
        help=f"require a token from {who} every caller: a YAML/JSON list of "
        "{name, role: admin|user|worker, token_sha256} (make them with `ftctl token`). "
        "Default: $TUNEFLEET_TOKENS (the list itself) or $TUNEFLEET_TOKENS_FILE; none = "
        "no authentication, and then only loopback addresses are served",
    )


def build_parser() -> argparse.ArgumentParser:
    # --coordinator is accepted before or after the subcommand; SUPPRESS keeps a
    # subcommand that does not repeat it from resetting the global value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=argparse.SUPPRESS,
        help=f"coordinator address (default: ${ENV_TARGET}, else {DEFAULT_TARGET})",
    )
    connect_help = "keep retrying an unreachable coordinator this long (default: 10)"
    common.add_argument(
        "--connect-timeout", type=float, metavar="S", default=argparse.SUPPRESS, help=connect_help
    )
    token_help = (
        "file holding your token, sent with every call (default: $TUNEFLEET_TOKEN, else "
        "the file in $TUNEFLEET_TOKEN_FILE). There is no flag taking the token itself: "
        "`ps` and shell history would show it"
    )
    tls_ca_help = (
        "CA certificate (PEM) that signed the coordinator's: connect with TLS (default: "
        "$TUNEFLEET_TLS_CA). A coordinator requiring client certificates also needs "
        "$TUNEFLEET_TLS_CERT and $TUNEFLEET_TLS_KEY"
    )
    common.add_argument("--token-file", metavar="FILE", default=argparse.SUPPRESS, help=token_help)
    common.add_argument("--tls-ca", metavar="PEM", default=argparse.SUPPRESS, help=tls_ca_help)
    parser = argparse.ArgumentParser(
        prog="ftctl",
        description="tunefleet: submit and watch fine-tuning jobs, or run the cluster.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help=f"coordinator address (default: ${ENV_TARGET}, else {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--connect-timeout", type=float, metavar="S", default=10.0, help=connect_help
    )
    parser.add_argument("--token-file", metavar="FILE", default=None, help=token_help)
    parser.add_argument("--tls-ca", metavar="PEM", default=None, help=tls_ca_help)
    parser.add_argument("--version", action="version", version=f"ftctl {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func, help: str, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[common],
            help=help,
            description=help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kw,
        )
        p.set_defaults(func=func)
        return p

    log_format = {
        "choices": ("text", "json"),
        "default": "text",
        "help": "log lines as text, or one JSON object per line (default: text)",
    }
    throttle = {
        "type": float,
        "default": 2.0,
        "metavar": "S",
        "help": "without a terminal, print at most one train-metrics line per S seconds",
    }

    p = add("validate", cmd_validate, "check job YAML files (no coordinator needed)")
    p.add_argument("files", nargs="+", metavar="JOB.yaml")
    p.add_argument(
        "--no-check-paths", action="store_true", help="do not check that data/model paths exist"
    )

    p = add("submit", cmd_submit, "submit a job", epilog=EXIT_CODES_HELP)
    p.add_argument("file", metavar="JOB.yaml")
    p.add_argument("-f", "--follow", action="store_true", help="show progress until the job ends")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the job id (for scripts)")
    p.add_argument("--priority", type=int, help="override the spec's priority (higher first)")
    p.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="resubmitting with the same key returns the same job (default: a fresh key)",
    )
    p.add_argument("--throttle", **throttle)

    p = add("jobs", cmd_jobs, "list jobs, newest first")
    p.add_argument(
        "--state",
        action="append",
        metavar="STATE",
        help="only jobs in this state (repeat or comma-separate: queued,running)",
    )
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("get", cmd_get, "show a job: state, reason, metrics, artifact paths")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--json", action="store_true", help="print JSON (with the resolved spec)")

    p = add(
        "logs", cmd_logs, "print a job's events; -f follows until it ends", epilog=EXIT_CODES_HELP
    )
    p.add_argument("job", metavar="JOB")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    p.add_argument("--after", type=int, default=0, metavar="SEQ", help="only events after this seq")
    p.add_argument("--throttle", **throttle)

    p = add("cancel", cmd_cancel, "cancel a job")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--reason", default="", help="recorded with the cancellation")

    p = add("workers", cmd_workers, "list workers")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("server", cmd_server, "run the coordinator in the foreground")
    p.add_argument("--listen", default=DEFAULT_TARGET, metavar="HOST:PORT")
    p.add_argument("--db", default=DEFAULT_DB_PATH, metavar="PATH")
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (default: off)",
    )
    p.add_argument(
        "--metrics-host", default="127.0.0.1", metavar="HOST", help="(default: %(default)s)"
    )
    p.add_argument(
        "--heartbeat-s",
        type=float,
        default=2.0,
        help="how often workers send heartbeats (default: %(default)s)",
    )
    p.add_argument(
        "--lease-s",
        type=float,
        default=10.0,
        help="a worker silent this long is lost and its job requeued (default: %(default)s)",
    )
    p.add_argument(
        "--max-followers",
        type=int,
        default=256,
        metavar="N",
        help="event streams (ftctl logs -f, SDK follows) served at once, each on a thread "
        "of their own pool; one more is refused (default: %(default)s)",
    )
    p.add_argument("--log-format", **log_format)
    _add_server_security(p)
    p.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="mutual TLS: require every connection (workers and users alike) to present a "
        "certificate signed by this CA",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --listen without TLS and tokens (a trusted network only)",
    )

    p = add(
        "worker",
        cmd_worker,
        "run a worker in the foreground; `ftctl worker drain ID` drains one (admin)",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("drain",),
        help="drain: stop worker WORKER_ID taking work; its job checkpoints and moves on",
    )
    p.add_argument("worker_id", nargs="?", metavar="WORKER_ID", help="(with drain)")
    p.add_argument("--artifacts", default=DEFAULT_ARTIFACTS, metavar="DIR")
    p.add_argument("--gpus", type=int, help="GPUs to offer (default: all detected)")
    p.add_argument("--id", help="stable worker id (default: assigned by the coordinator)")
    p.add_argument(
        "--address",
        metavar="HOST",
        help="where other machines of a multi-node job reach this one as rank 0 "
        "(default: $TUNEFLEET_WORKER_ADDRESS, else this host's IP on the route to the "
        "coordinator)",
    )
    p.add_argument(
        "--artifacts-uri",
        default=os.environ.get("TUNEFLEET_ARTIFACTS_URI") or None,
        metavar="URL",
        help="also upload succeeded jobs' final artifacts to this fsspec URL, e.g. "
        "s3://bucket/prefix (default: $TUNEFLEET_ARTIFACTS_URI)",
    )
    p.add_argument("--log-format", **log_format)
    from tunefleet.worker.__main__ import add_security_arguments

    add_security_arguments(p, tls_ca=False)

    p = add("up", cmd_up, "run a coordinator and one local worker in the foreground")
    p.add_argument("--listen", default=DEFAULT_TARGET, metavar="HOST:PORT")
    p.add_argument("--db", default=DEFAULT_DB_PATH, metavar="PATH")
    p.add_argument("--artifacts", default=DEFAULT_ARTIFACTS, metavar="DIR")
    p.add_argument("--gpus", type=int, help="GPUs the worker offers (default: all detected)")
    p.add_argument(
        "--worker-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="give up if the worker has not registered after S seconds",
    )
    _add_server_security(p, up=True)
    p.add_argument(
        "--allowed-root",
        action="append",
        metavar="DIR",
        help="confine the local worker's job paths to this folder (repeatable)",
    )

    p = add("token", cmd_token, "make a new random token and its tokens-file entry")
    p.add_argument("name", metavar="NAME", help="who uses it (shown in logs, recorded on jobs)")
    p.add_argument("--role", choices=("admin", "user", "worker"), default="user")

    p = add("run", cmd_run, "train a job here, without a coordinator", epilog=EXIT_CODES_HELP)
    p.add_argument("file", metavar="JOB.yaml")
    p.add_argument(
        "--out",
        metavar="DIR",
        help=f"output folder (default: output.dir, else {DEFAULT_RUNS}/NAME)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="ignore checkpoints already in the output folder"
    )
    p.add_argument("--throttle", **throttle)

    p = add("plan", cmd_plan, "print which blocks a job trains or freezes, without training")
    p.add_argument("file", metavar="JOB.yaml")

    p = add("plot", cmd_plot, "draw a job's loss, eval metrics and learning rate to a PNG")
    p.add_argument("job", metavar="JOB")
    p.add_argument("-o", "--output", metavar="PNG", help="(default: JOB-curves.png)")

    p = add("artifacts", cmd_artifacts, "list a job's artifacts, or download the uploaded ones")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--download", metavar="DIR", help="fetch the uploaded artifacts into DIR")
    p.add_argument(
        "--name", action="append", metavar="NAME", help="only this artifact (repeatable): model..."
    )
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
            _print_problems(getattr(args, "file", None) or "job spec", e.errors, _stderr())
        else:
            _error(e.message)
        return EXIT_FAILED
    except Unavailable as e:
        _error(
            f"cannot reach coordinator at {e.target or args.coordinator or DEFAULT_TARGET}: "
            f"is `ftctl server` running? (set --coordinator or {ENV_TARGET})"
        )
        return EXIT_FAILED
    except TunefleetError as e:
        _error(e.message)
        return EXIT_FAILED
    except FileNotFoundError as e:
        _error(f"no such file: {e.filename or e}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

"""Starting and stopping the coordinator: `start_server` for tests and embedding, `serve`
for `ftctl server`.

Safe by default: without both TLS and tokens the coordinator listens on loopback only;
any other address needs `insecure=True` (`--insecure`) and logs a warning. With tokens,
every call is authenticated by `tunefleet.coordinator.auth.AuthInterceptor`.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from tunefleet.coordinator.auth import (
    SERVICE_PREFIX,
    AuthInterceptor,
    RedactBearer,
    TokenTable,
)
from tunefleet.coordinator.db_lock import DatabaseLock
from tunefleet.coordinator.event_bus import EventBus
from tunefleet.coordinator.metrics import CoordinatorMetrics
from tunefleet.coordinator.scheduler import Scheduler
from tunefleet.coordinator.service import CoordinatorService
from tunefleet.coordinator.store import JobStore
from tunefleet.defaults import DEFAULT_ADDRESS, DEFAULT_DB_PATH
from tunefleet.limits import MAX_QUOTE_CHARS, clip_chars
from tunefleet.spec.urls import UPLOAD_SCHEMES, storage_url_problem
from tunefleet.transport import SERVER_OPTIONS, check_pem_files, check_port, is_loopback
from tunefleet.v1 import coordinator_pb2_grpc

log = logging.getLogger(__name__)

# Spare threads in the follow pool beyond --max-followers. The per-connection stream cap
# and the server's gRPC options (message limits, keepalive, ping policy) live in
# tunefleet.transport, next to the client options they must agree with.
_STREAM_POOL_SPARE = 8
LONG_POLL_METHOD = f"{SERVICE_PREFIX}AcquireJob"


class _LongCallsOnTheirOwnThreads(grpc.ServerInterceptor):
    """Runs the calls that wait (event streams, AcquireJob long polls) on thread pools of
    their own, so that they never queue the short ones.

    A follower holds its thread for as long as it follows and an idle worker's long poll
    for seconds (the sync server has no other way to wait). On the one shared pool, enough
    `ftctl logs -f`, or more idle workers than threads, left heartbeats queued behind them
    until leases ran out. Installed first, so that the behavior gRPC calls is this one
    (gRPC picks the pool by its `experimental_thread_pool` attribute)."""

    def __init__(self, *, streams: ThreadPoolExecutor, polls: ThreadPoolExecutor):
        self._streams = streams
        self._polls = polls

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.request_streaming or not method.startswith(SERVICE_PREFIX):
            return handler
        if handler.response_streaming:
            kind, behavior, pool = (
                grpc.unary_stream_rpc_method_handler,
                handler.unary_stream,
                self._streams,
            )
        elif method == LONG_POLL_METHOD:
            kind, behavior, pool = (
                grpc.unary_unary_rpc_method_handler,
                handler.unary_unary,
                self._polls,
            )
        else:
            return handler

        def call(request, context):
            return behavior(request, context)

        call.experimental_thread_pool = pool
        return kind(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class CoordinatorServer:
    """A running coordinator. Stop it with `.stop()` or use it as a context manager."""

    def __init__(
        self,
        *,
        server: grpc.Server,
        executors: tuple[ThreadPoolExecutor, ...],
        host: str,
        port: int,
        scheduler: Scheduler,
        store: JobStore,
        bus: EventBus,
        metrics: CoordinatorMetrics | None = None,
        health=None,
        db_lock: DatabaseLock | None = None,
    ):
        self._db_lock = db_lock
        self.metrics = metrics  # .port: where /metrics is served, when it is
        self._health = health
        self._server = server
        self._executors = executors
        self._host = host
        self.port = port
        self.scheduler = scheduler
        self.store = store
        self.bus = bus
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def address(self) -> str:
        """Where clients on this machine reach the server, e.g. "127.0.0.1:50051"."""
        return f"{self._host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Stops serving; in-flight calls get `grace` seconds, long polls and follows end
        at once with UNAVAILABLE. Idempotent and thread-safe."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            if self._health is not None:  # readiness probes fail from here on
                self._health.enter_graceful_shutdown()
            self.scheduler.close()
            self.bus.close()
            self._server.stop(grace).wait()
            # Let handlers that are still unwinding finish before the store closes under
            # them, but never hang a shutdown on one.
            drains = [
                threading.Thread(
                    target=executor.shutdown, kwargs={"cancel_futures": True}, daemon=True
                )
                for executor in self._executors
            ]
            for drain in drains:
                drain.start()
            deadline = time.monotonic() + 5
            for drain in drains:
                drain.join(timeout=max(deadline - time.monotonic(), 0))
            if self.metrics is not None:
                self.metrics.close()
            self.store.close()
            if self._db_lock is not None:  # another coordinator may serve it from here on
                self._db_lock.release()
            self._stopped.set()
            log.info("coordinator on %s stopped", self.address)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Blocks until the server stops (or `timeout` passes); True if it stopped."""
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> CoordinatorServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class ServerTls:
    """The coordinator's TLS: its certificate chain and key (PEM files), and optionally the
    CA whose client certificates it requires (mutual TLS).

    gRPC Python can only require client certificates of every connection or of none, so
    with `client_ca_file` users' clients need certificates too, not just workers.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: Path) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror}") from None

        key, cert = read(self.key_file), read(self.cert_file)
        client_ca = read(self.client_ca_file) if self.client_ca_file else None
        self._check_pem()
        return grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    def _check_pem(self) -> None:
        """ValueError naming the flag and the file when the PEM material is not what its
        flag wants: gRPC would say only that the port could not be added, so a placeholder
        secret, a key from another certificate or the two files swapped read as "cannot
        listen on HOST:PORT (address in use?)"."""
        try:
            check_pem_files(cert=self.cert_file, key=self.key_file)
        except ValueError as exc:
            raise ValueError(f"--tls-cert / --tls-key: {exc}") from None
        try:
            check_pem_files(ca=self.client_ca_file)
        except ValueError as exc:
            raise ValueError(f"--tls-client-ca: {exc}") from None


def check_exposure(host: str, *, tls: bool, tokens: bool, insecure: bool) -> str | None:
    """Refuses (ValueError) a non-loopback listen address without TLS and tokens unless
    `insecure`; returns the warning to give when it is allowed that way."""
    if is_loopback(host) or (tls and tokens):
        return None
    missing = " and ".join(w for w, ok in (("TLS", tls), ("tokens", tokens)) if not ok)
    where = host or "all interfaces"
    if not insecure:
        raise ValueError(
            f"refusing to listen on {where} without {missing}: anyone who can reach it could "
            "submit jobs that read and write files on the workers. Give --tls-cert/--tls-key and "
            "--tokens, listen on 127.0.0.1, or pass --insecure if the network is trusted"
        )
    return f"listening on {where} without {missing} (--insecure): the network must be trusted"


def _split_listen(listen: str) -> tuple[str, str]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    check_port(listen)
    return host, port


def start_server(
    listen: str = "127.0.0.1:0",
    db_path: str | Path = DEFAULT_DB_PATH,
    *,
    heartbeat_interval_s: float = 2.0,
    lease_timeout_s: float = 10.0,
    check_paths: bool = False,
    storage_uri: str = "",
    max_workers: int = 32,
    max_followers: int = 256,
    max_long_polls: int = 1024,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    tls: ServerTls | None = None,
    tokens: TokenTable | None = None,
    insecure: bool = False,
    max_concurrent_rpcs: int | None = None,
) -> CoordinatorServer:
    """Starts a coordinator serving on `listen` (port 0 picks a free port) and returns it.

    Calls that wait have thread pools of their own, so they never hold up the short calls
    (heartbeats, reports, submits) on the `max_workers` threads: event streams (followers)
    up to `max_followers` (one more is refused with RESOURCE_EXHAUSTED), and AcquireJob long
    polls up to `max_long_polls` (more wait their turn; threads start only when needed).
    With `metrics_port` (0 = any free port), Prometheus metrics are served on
    http://metrics_host:port/metrics.

    With `tls`, the port speaks only TLS; with `tokens`, every call needs a token (see
    tunefleet.coordinator.auth). Without both, `listen` must be a loopback address unless
    `insecure` (ValueError otherwise). `max_concurrent_rpcs` (default 4 x max_workers +
    max_followers + max_long_polls) caps the calls in progress or queued for a thread; more
    get RESOURCE_EXHAUSTED rather than an unbounded queue.
    """
    # Imported here so that `python -m tunefleet.coordinator.health` (the probe) runs cleanly.
    from tunefleet.coordinator.health import add_health_service

    host, _ = _split_listen(listen)
    if max_followers < 1:
        raise ValueError(f"--max-followers must be at least 1, got {max_followers}")
    if max_long_polls < 1:
        raise ValueError(f"max_long_polls must be at least 1, got {max_long_polls}")
    check_storage_uri(storage_uri)
    warning = check_exposure(
        host, tls=tls is not None, tokens=tokens is not None, insecure=insecure
    )
    credentials = tls.credentials() if tls is not None else None  # unreadable files fail here
    store, db_lock = open_store(db_path, listen)
    bus = EventBus()
    scheduler = Scheduler(
        store,
        bus,
        heartbeat_interval_s=heartbeat_interval_s,
        lease_timeout_s=lease_timeout_s,
        check_paths=check_paths,
        storage_uri=storage_uri,
        sampler_process=True,
    )
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tunefleet-rpc")
    # A few threads beyond the cap, so that a refusal is answered at once.
    streams = ThreadPoolExecutor(
        max_workers=max_followers + _STREAM_POOL_SPARE, thread_name_prefix="tunefleet-follow"
    )
    polls = ThreadPoolExecutor(max_workers=max_long_polls, thread_name_prefix="tunefleet-poll")
    metrics = CoordinatorMetrics(scheduler, store)
    interceptors = [
        _LongCallsOnTheirOwnThreads(streams=streams, polls=polls),
        metrics.interceptor,
    ]
    if tokens is not None:
        interceptors.append(AuthInterceptor(tokens))
    server = grpc.server(
        executor,
        options=SERVER_OPTIONS,
        interceptors=interceptors,
        maximum_concurrent_rpcs=max_concurrent_rpcs
        or 4 * max_workers + max_followers + max_long_polls,
    )
    pools = (executor, streams, polls)

    def give_up() -> None:
        for pool in pools:
            pool.shutdown(wait=False)
        store.close()
        db_lock.release()

    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorService(scheduler, max_streams=max_followers), server
    )
    health = add_health_service(server)
    try:
        if credentials is not None:
            port = server.add_secure_port(listen, credentials)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        port = 0
        cause = exc
    else:
        cause = None
    if port == 0:
        give_up()
        raise RuntimeError(f"cannot listen on {listen} (address in use?)") from cause
    if metrics_port is not None:
        try:
            metrics.serve(metrics_host, metrics_port)
        except RuntimeError:
            server.stop(None)
            give_up()
            raise
    server.start()
    scheduler.start()
    client_host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]", "::") else host
    db_lock.record(f"{client_host}:{port}")
    log.info(
        "coordinator listening on %s:%d (db %s; %s, %s)",
        client_host,
        port,
        store.path,
        "TLS" + (" with client certificates" if tls and tls.client_ca_file else "")
        if tls
        else "plaintext",
        f"{len(tokens)} tokens" if tokens is not None else "no authentication",
    )
    if warning:
        log.warning("%s", warning)
    return CoordinatorServer(
        server=server,
        executors=pools,
        host=client_host,
        port=port,
        scheduler=scheduler,
        store=store,
        bus=bus,
        metrics=metrics,
        health=health,
        db_lock=db_lock,
    )


def open_store(db_path: str | Path, address: str) -> tuple[JobStore, DatabaseLock]:
    """The JobStore at `db_path`, and this coordinator's lock on it (see
    tunefleet.coordinator.db_lock), taken first: a database another coordinator serves is
    refused (DatabaseInUse, a RuntimeError naming it and its owner) before it is touched.

    RuntimeError naming the file when SQLite cannot open or use it (an unwritable folder, a
    file that is not a database), which SQLite alone says as "unable to open database file"
    without saying which file."""
    try:
        db_lock = DatabaseLock.claim(db_path, address)
        try:
            return JobStore(db_path), db_lock
        except BaseException:
            db_lock.release()
            raise
    except (sqlite3.Error, OSError) as exc:
        hint = (
            " (does its folder exist, and may this user write there?)"
            if "unable to open" in str(exc) or isinstance(exc, OSError)
            else ""
        )
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise RuntimeError(f"cannot use the database {db_path}: {reason}{hint}") from None


def check_lease_settings(heartbeat_s: float, lease_s: float) -> None:
    """Raises ValueError naming the flag when the heartbeat/lease pair cannot work."""
    if heartbeat_s <= 0:
        raise ValueError(f"--heartbeat-s must be > 0, got {heartbeat_s}")
    if lease_s <= heartbeat_s:
        raise ValueError(
            f"--lease-s ({lease_s}) must be longer than --heartbeat-s ({heartbeat_s}): "
            "a lease must outlive a few lost heartbeats"
        )


def check_storage_uri(storage_uri: str) -> None:
    """Raises ValueError naming --storage-uri when clients could not upload there: they
    would each fail at submit (or, for a plain path, write to a folder of their own that
    no worker sees), long after the coordinator started."""
    problem = storage_url_problem(storage_uri, UPLOAD_SCHEMES) if storage_uri else None
    if problem:
        raise ValueError(f"--storage-uri {clip_chars(storage_uri, MAX_QUOTE_CHARS)}: {problem}")


def serve(
    listen: str = DEFAULT_ADDRESS,
    db_path: str | Path = DEFAULT_DB_PATH,
    *,
    announce: bool = True,
    **options,
) -> None:
    """Runs a coordinator until SIGINT or SIGTERM (`ftctl server`). `options` are
    start_server's keyword arguments. `announce`: also print where it listens (and serves
    metrics) on stdout, for a terminal; off for JSON logs, whose collector reads stdout
    and stderr as one stream of JSON lines (the log records say the same)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactBearer())
    stop_requested = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop_requested.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        server = start_server(listen, db_path, **options)
        if announce:
            print(
                f"tunefleet coordinator listening on {server.address} (db {Path(db_path)})",
                flush=True,
            )
        if announce and server.metrics is not None and server.metrics.port is not None:
            metrics_host = options.get("metrics_host", "127.0.0.1")
            print(f"metrics on http://{metrics_host}:{server.metrics.port}/metrics", flush=True)
        try:
            while not stop_requested.wait(1.0):
                pass
        finally:
            server.stop(grace=5.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""Starting and stopping the coordinator: `start_server` for tests and embedding, `serve`
for `ftctl server`."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from tunefleet.coordinator.event_bus import EventBus
from tunefleet.coordinator.scheduler import Scheduler
from tunefleet.coordinator.service import CoordinatorService
from tunefleet.coordinator.store import JobStore
from tunefleet.v1 import coordinator_pb2_grpc

log = logging.getLogger(__name__)

_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    # We ping idle connections so a follower whose machine vanished (no FIN) is noticed
    # and its stream, and the server thread it holds, are released.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Tolerate clients that ping us (the SDK and workers keep long polls and follows
    # alive with pings): without these, gRPC answers frequent pings with GOAWAY.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    # gRPC enables SO_REUSEPORT by default: a second coordinator on the same port would
    # silently share the connections (and split the jobs). Fail to bind instead.
    ("grpc.so_reuseport", 0),
]


class CoordinatorServer:
    """A running coordinator. Stop it with `.stop()` or use it as a context manager."""

    def __init__(
        self,
        *,
        server: grpc.Server,
        executor: ThreadPoolExecutor,
        host: str,
        port: int,
        scheduler: Scheduler,
        store: JobStore,
        bus: EventBus,
    ):
        self._server = server
        self._executor = executor
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
            self.scheduler.close()
            self.bus.close()
            self._server.stop(grace).wait()
            # Let handlers that are still unwinding finish before the store closes under
            # them, but never hang a shutdown on one.
            drain = threading.Thread(
                target=self._executor.shutdown, kwargs={"cancel_futures": True}, daemon=True
            )
            drain.start()
            drain.join(timeout=5)
            self.store.close()
            self._stopped.set()
            log.info("coordinator on %s stopped", self.address)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Blocks until the server stops (or `timeout` passes); True if it stopped."""
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> CoordinatorServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _split_listen(listen: str) -> tuple[str, str]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host, port


def start_server(
    listen: str = "127.0.0.1:0",
    db_path: str | Path = ".tunefleet/coordinator.db",
    *,
    heartbeat_interval_s: float = 2.0,
    lease_timeout_s: float = 10.0,
    check_paths: bool = True,
    max_workers: int = 32,
) -> CoordinatorServer:
    """Starts a coordinator serving on `listen` (port 0 picks a free port) and returns it.

    Each long-polling worker and each follower holds one of the `max_workers` server
    threads while it waits.
    """
    host, _ = _split_listen(listen)
    store = JobStore(db_path)
    bus = EventBus()
    scheduler = Scheduler(
        store,
        bus,
        heartbeat_interval_s=heartbeat_interval_s,
        lease_timeout_s=lease_timeout_s,
        check_paths=check_paths,
    )
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tunefleet-rpc")
    server = grpc.server(executor, options=SERVER_OPTIONS)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorService(scheduler, store, bus), server
    )
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        port = 0
        cause = exc
    else:
        cause = None
    if port == 0:
        executor.shutdown(wait=False)
        store.close()
        raise RuntimeError(f"cannot listen on {listen} (address in use?)") from cause
    server.start()
    scheduler.start()
    client_host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]", "::") else host
    log.info("coordinator listening on %s:%d (db %s)", client_host, port, store.path)
    return CoordinatorServer(
        server=server,
        executor=executor,
        host=client_host,
        port=port,
        scheduler=scheduler,
        store=store,
        bus=bus,
    )


def serve(
    listen: str = "127.0.0.1:50051",
    db_path: str | Path = ".tunefleet/coordinator.db",
    **options,
) -> None:
    """Runs a coordinator until SIGINT or SIGTERM (`ftctl server`). `options` are
    start_server's keyword arguments."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    stop_requested = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop_requested.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        server = start_server(listen, db_path, **options)
        print(
            f"tunefleet coordinator listening on {server.address} (db {Path(db_path)})", flush=True
        )
        try:
            while not stop_requested.wait(1.0):
                pass
        finally:
            server.stop(grace=5.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

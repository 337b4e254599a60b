"""How the worker calls the coordinator: which failures are worth retrying, with what
backoff, and how an outage is logged (once, and once more when it ends).

Why its own module: the daemon decides *what* to tell the coordinator and when; this module
is the one place that knows gRPC status codes, timeouts and retry pacing, so those change
without touching the daemon's job handling."""

from __future__ import annotations

import logging
import threading
import time

import grpc

from tunefleet.status_details import WORKER_ID_IN_USE, read_details
from tunefleet.transport import Backoff

log = logging.getLogger("tunefleet.worker.daemon")  # the daemon's lines, as before

# Failures that say "try again later", as opposed to "this request is wrong".
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
RPC_TIMEOUT_S = 30.0
MAX_BACKOFF_S = 2.0  # a restarting coordinator is back in seconds


def too_large(exc: grpc.RpcError) -> bool:
    """RESOURCE_EXHAUSTED because the message is over a size limit (ours or the peer's):
    sending it again fails the same way."""
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details


class RpcOutages:
    """Which RPCs are failing right now: a warning when one starts failing, debug lines
    while it goes on, an info line when it works again."""

    def __init__(self) -> None:
        self._failing: set[str] = set()

    def failed(self, what: str, exc: Exception) -> None:
        if not isinstance(exc, grpc.RpcError):
            log.exception("%s failed", what)
            return
        level = logging.DEBUG if what in self._failing else logging.WARNING
        self._failing.add(what)
        log.log(level, "%s failed: %s %s (retrying)", what, exc.code().name, exc.details())

    def ok(self, what: str) -> None:
        if what in self._failing:
            self._failing.discard(what)
            log.info("%s works again", what)


def call_with_retry(
    stub,
    method: str,
    request,
    *,
    stopping: threading.Event,
    outages: RpcOutages,
    patience_after_stop_s: float = 0.0,
    give_up_after_s: float | None = None,
):
    """Calls the RPC `method`, retrying transient failures with backoff. Once `stopping`
    is set it gives up after `patience_after_stop_s`, and in any case after
    `give_up_after_s` (None: never), raising the last error. A request too big to send is
    not transient: it fails at once."""
    rpc = getattr(stub, method)
    backoff = Backoff(0.2, MAX_BACKOFF_S)
    stop_deadline = None
    give_up_at = None if give_up_after_s is None else time.monotonic() + give_up_after_s
    while True:
        try:
            response = rpc(request, timeout=RPC_TIMEOUT_S)
            outages.ok(method)
            return response
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE or too_large(exc):
                raise
            if give_up_at is not None and time.monotonic() >= give_up_at:
                raise
            outages.failed(method, exc)
            if stopping.is_set():
                stop_deadline = stop_deadline or time.monotonic() + patience_after_stop_s
                remaining = stop_deadline - time.monotonic()
                if remaining <= 0:
                    raise
                time.sleep(min(backoff.next(), remaining))
            else:
                stopping.wait(backoff.next())


class WorkerIdInUse(RuntimeError):
    """The coordinator refused this worker's id: another live worker process holds it. The
    message is the coordinator's one line, which says to give each worker its own --id."""


def id_in_use(exc: grpc.RpcError) -> tuple[str, float] | None:
    """(message, how long the coordinator waits for a silent holder before handing the id
    over) when `exc` is the WORKER_ID_IN_USE refusal; None for any other failure."""
    if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
        return None
    info = read_details(exc).error_info
    if info is None or info.reason != WORKER_ID_IN_USE:
        return None
    try:
        takeover_after_s = float(info.metadata.get("takeover_after_s", ""))
    except ValueError:
        takeover_after_s = 5.0
    return (
        exc.details() or f"worker id {info.metadata.get('worker_id')} is in use",
        takeover_after_s,
    )

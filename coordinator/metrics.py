"""Prometheus metrics for the coordinator (`ftctl server --metrics-port N` serves /metrics).

Two kinds of series:
- What the coordinator *is* (jobs by state, the queue, workers, GPUs) is read at scrape
  time by `StoreCollector` (jobs from the store's aggregates, workers from the Scheduler), never counted up and down in memory: the numbers
  stay right across coordinator restarts and can never drift from the database.
- What the coordinator *did* since it started (RPCs and their latency, events ingested) is
  counted by `RpcObserver`, a gRPC server interceptor. Counters restart at zero with the
  process, which Prometheus' rate() handles.

The interceptor also tags log lines with the job an RPC names (see tunefleet.logging_setup).
It is installed whether or not /metrics is served (it costs microseconds per call), so
turning metrics on never changes the code path a request takes.
Each `CoordinatorMetrics` has its own registry, so several coordinators in one process
(tests) do not collide.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from tunefleet.coordinator.store import JobStore
from tunefleet.logging_setup import job_log_context
from tunefleet.v1 import coordinator_pb2, job_pb2

log = logging.getLogger(__name__)

__all__ = ["QUEUE_WAIT_BUCKETS", "CoordinatorMetrics", "RpcObserver", "StoreCollector"]

# AcquireJob is a long poll (seconds) and a followed StreamEvents lasts as long as its job,
# so the latency buckets reach far beyond what a normal unary call takes.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# From seconds (an idle cluster) to a day (a queue behind long trainings).
QUEUE_WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

_JOB_STATES = [v.name for v in job_pb2.JobState.DESCRIPTOR.values if v.number != 0]
_WORKER_STATES = [v.name for v in coordinator_pb2.WorkerState.DESCRIPTOR.values if v.number != 0]


class StoreCollector(Collector):
    """Gauges derived from the coordinator's database on every scrape.

    Job counts and the queue-wait histogram are aggregated by the store (JobStore.job_stats,
    in SQL over a read-only connection of its own), so a scrape neither loads every job nor
    holds the store's lock while it scans; worker and GPU numbers come from the scheduler,
    which owns the capacity rules.
    """

    def __init__(self, scheduler, store: JobStore, *, clock: Callable[[], float] = time.time):
        self._scheduler = scheduler
        self._store = store
        self._clock = clock

    def collect(self) -> Iterator:
        try:
            yield from self._job_metrics()
        except sqlite3.Error as exc:  # a scrape must not fail because of one bad read
            log.warning("metrics: cannot read jobs from %s: %s", self._store.path, exc)
        yield from self._worker_metrics()

    def _job_metrics(self) -> Iterator:
        now = self._clock()
        stats = self._store.job_stats(QUEUE_WAIT_BUCKETS)
        jobs = GaugeMetricFamily("tunefleet_jobs", "Jobs by state.", labels=["state"])
        for name in _JOB_STATES:
            jobs.add_metric([name], stats.by_state.get(job_pb2.JobState.Value(name), 0))
        yield jobs
        yield GaugeMetricFamily(
            "tunefleet_queue_depth", "Jobs waiting in the queue (QUEUED).", value=stats.queue_depth
        )
        oldest = stats.oldest_queued_at
        yield GaugeMetricFamily(
            "tunefleet_queue_oldest_wait_seconds",
            "How long the oldest queued job has waited (0 when the queue is empty).",
            value=max(now - oldest, 0.0) if oldest is not None else 0.0,
        )
        buckets = [
            (str(float(b)), c)
            for b, c in zip(QUEUE_WAIT_BUCKETS, stats.wait_cumulative, strict=True)
        ]
        buckets.append(("+Inf", stats.started))
        yield HistogramMetricFamily(
            "tunefleet_queue_wait_seconds",
            "Seconds from submission to the start of training, over every job that started.",
            buckets=buckets,
            sum_value=stats.wait_sum_s,
        )

    def _worker_metrics(self) -> Iterator:
        workers = self._scheduler.list_workers()
        states = dict.fromkeys(_WORKER_STATES, 0)
        gpus_free = gpus_used = 0
        for worker in workers:
            name = coordinator_pb2.WorkerState.Name(worker.state)
            states[name] = states.get(name, 0) + 1
            if worker.state == coordinator_pb2.LIVE:
                gpus_free += worker.free_gpus
                gpus_used += max(worker.resources.gpus - worker.free_gpus, 0)
        family = GaugeMetricFamily(
            "tunefleet_workers", "Registered workers by state.", labels=["state"]
        )
        for name, count in states.items():
            family.add_metric([name], count)
        yield family
        gpus = GaugeMetricFamily("tunefleet_gpus", "GPUs of live workers.", labels=["state"])
        gpus.add_metric(["free"], gpus_free)
        gpus.add_metric(["used"], gpus_used)
        yield gpus


def _split_method(full_method: str) -> tuple[str, str]:
    """'/tunefleet.v1.Coordinator/SubmitJob' -> ('tunefleet.v1.Coordinator', 'SubmitJob')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _job_context(request):
    """The job a request names, as a log context (a no-op for requests without one)."""
    job_id = getattr(request, "job_id", "")
    if not isinstance(job_id, str) or not job_id:
        return contextlib.nullcontext()
    attempt = getattr(request, "attempt", 0)
    return job_log_context(job_id, attempt if isinstance(attempt, int) else 0)


def _code_name(context, failed: bool) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return code.name


class RpcObserver(grpc.ServerInterceptor):
    """Times every RPC, counts results by status code and ingested events by kind, and runs
    each handler inside the log context of the job its request names."""

    def __init__(self, registry: CollectorRegistry):
        self.latency = Histogram(
            "tunefleet_rpc_duration_seconds",
            "Time to handle an RPC; for streams, the whole stream. AcquireJob is a long poll.",
            ["service", "method"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.handled = Counter(
            "tunefleet_rpc_handled",
            "RPCs completed, by status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.events = Counter(
            "tunefleet_events_ingested",
            "Job events accepted from workers (ReportEvents), by kind.",
            ["kind"],
            registry=registry,
        )

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split_method(handler_call_details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # request streaming: the coordinator has none; left unobserved

    def _record(self, service: str, method: str, code: str, started: float) -> None:
        self.latency.labels(service, method).observe(time.perf_counter() - started)
        self.handled.labels(service, method, code).inc()

    def _unary(self, behavior, service: str, method: str):
        def observed(request, context):
            started = time.perf_counter()
            failed = True
            try:
                with _job_context(request):
                    response = behavior(request, context)
                failed = False
                return response
            finally:
                code = _code_name(context, failed)
                self._record(service, method, code, started)
                if code == "OK" and method == "ReportEvents":
                    for event in request.events:
                        self.events.labels(event.WhichOneof("kind") or "none").inc()

        return observed

    def _stream(self, behavior, service: str, method: str):
        def observed(request, context):
            started = time.perf_counter()
            responses = behavior(request, context)
            code = "UNKNOWN"
            try:
                while True:
                    # The log context is set around each step only: the generator may be
                    # resumed by whichever thread serves the stream next.
                    with _job_context(request):
                        try:
                            response = next(responses)
                        except StopIteration:
                            break
                    yield response
                code = _code_name(context, failed=False)
            except GeneratorExit:  # the client went away or the server stops
                code = "CANCELLED"
                raise
            except Exception:
                code = _code_name(context, failed=True)
                raise
            finally:
                close = getattr(responses, "close", None)
                if close is not None:
                    close()
                self._record(service, method, code, started)

        return observed


class CoordinatorMetrics:
    """The coordinator's metrics registry: RPC observation (install `.interceptor` on the
    gRPC server) plus the store-derived gauges; `.serve()` exposes them over HTTP."""

    def __init__(self, scheduler, store: JobStore):
        self.registry = CollectorRegistry(auto_describe=True)
        self.interceptor = RpcObserver(self.registry)
        self.registry.register(StoreCollector(scheduler, store))
        self._httpd = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The /metrics port while serving, else None."""
        return self._httpd.server_address[1] if self._httpd is not None else None

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serves /metrics on host:port (0 = any free port) in a daemon thread; returns the
        port. Raises RuntimeError when the address cannot be bound."""
        try:
            self._httpd, self._thread = start_http_server(port, host, registry=self.registry)
        except (OSError, OverflowError) as exc:  # OverflowError: a port above 65535
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise RuntimeError(f"cannot serve metrics on {host}:{port}: {reason}") from exc
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = None

"""The gRPC servicer: translates requests into Scheduler calls and refusals into statuses.

Handlers hold no state of their own. A CoordinatorError becomes its status code and
message; anything else is logged with its traceback here and reaches the client only as
INTERNAL with a pointer to the coordinator's log.
"""

from __future__ import annotations

import functools
import logging
import socket

import grpc

from tunefleet.coordinator.errors import CoordinatorError, InvalidArgument, Unavailable
from tunefleet.coordinator.event_bus import EventBus
from tunefleet.coordinator.scheduler import Scheduler
from tunefleet.coordinator.store import JobStore
from tunefleet.states import is_terminal
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger(__name__)

_INTERNAL_MESSAGE = "internal error in the coordinator; its log has the details"

# A follower re-checks the job this often even without news, as a safety net against a
# missed wake-up; normal delivery is driven by EventBus notifications.
_FOLLOW_RECHECK_S = 10.0
_REPLAY_BATCH = 500


def _unary(handler):
    @functools.wraps(handler)
    def wrapper(self, request, context):
        try:
            return handler(self, request, context)
        except CoordinatorError as exc:
            context.abort(exc.code, str(exc))
        except Exception:
            log.exception("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE)

    return wrapper


def _streaming(handler):
    @functools.wraps(handler)
    def wrapper(self, request, context):
        try:
            yield from handler(self, request, context)
        except CoordinatorError as exc:
            context.abort(exc.code, str(exc))
        except Exception:
            log.exception("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE)

    return wrapper


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, scheduler: Scheduler, store: JobStore, bus: EventBus):
        self.scheduler = scheduler
        self.store = store
        self.bus = bus

    # ---- client API ------------------------------------------------------------------

    @_unary
    def SubmitJob(self, request, context):
        if not request.HasField("spec"):
            raise InvalidArgument("SubmitJobRequest.spec is required")
        return self.scheduler.submit(request.spec, request.idempotency_key)

    @_unary
    def GetJob(self, request, context):
        return self.scheduler.get_job(request.job_id)

    @_unary
    def ListJobs(self, request, context):
        jobs = self.store.list_jobs(request.states, request.limit)
        return coordinator_pb2.ListJobsResponse(jobs=jobs)

    @_unary
    def CancelJob(self, request, context):
        return self.scheduler.cancel(request.job_id, request.reason)

    @_streaming
    def StreamEvents(self, request, context):
        job_id = request.job_id
        self.scheduler.get_job(job_id)  # NOT_FOUND before anything is streamed
        # Subscribe before the first read: see event_bus for why nothing can be missed.
        with self.bus.subscribe(job_id) as subscription:
            context.add_callback(subscription.close)  # the client went away or we stop
            seq = request.after_seq
            while context.is_active():
                batch = self.store.events_after(job_id, seq, _REPLAY_BATCH)
                for event in batch:
                    yield event
                    seq = event.seq
                if len(batch) == _REPLAY_BATCH:
                    continue
                if not request.follow:
                    return
                job = self.scheduler.get_job(job_id)
                if is_terminal(job.state) and seq >= job.last_seq:
                    return
                if self.bus.closed:
                    raise Unavailable("the coordinator is shutting down; follow again later")
                if subscription.closed:
                    return
                subscription.wait_beyond(seq, timeout=_FOLLOW_RECHECK_S)

    @_unary
    def ListWorkers(self, request, context):
        return coordinator_pb2.ListWorkersResponse(workers=self.scheduler.list_workers())

    # ---- worker API ------------------------------------------------------------------

    @_unary
    def RegisterWorker(self, request, context):
        worker_id = self.scheduler.register_worker(
            request.worker_id,
            hostname=request.hostname or _peer_host(context),
            resources=request.resources,
            address=request.address,
        )
        return coordinator_pb2.RegisterWorkerResponse(
            worker_id=worker_id,
            heartbeat_interval_s=self.scheduler.heartbeat_interval_s,
            lease_timeout_s=self.scheduler.lease_timeout_s,
        )

    @_unary
    def Heartbeat(self, request, context):
        cancel, known = self.scheduler.heartbeat(request.worker_id, request.running_job_ids)
        return coordinator_pb2.HeartbeatResponse(cancel_job_ids=cancel, known=known)

    @_unary
    def AcquireJob(self, request, context):
        job = self.scheduler.acquire(request.worker_id, request.wait_seconds, context.is_active)
        if job is None:
            return coordinator_pb2.AcquireJobResponse()
        return coordinator_pb2.AcquireJobResponse(
            assignment=coordinator_pb2.Assignment(job=job, attempt=job.attempt)
        )

    @_unary
    def ReportEvents(self, request, context):
        last_seq = self.scheduler.report(
            request.worker_id, request.job_id, request.attempt, request.events
        )
        return coordinator_pb2.ReportEventsResponse(last_seq=last_seq)

    @_unary
    def FinishJob(self, request, context):
        self.scheduler.finish(
            request.worker_id,
            request.job_id,
            request.attempt,
            request.state,
            request.reason,
            artifacts=dict(request.artifacts),
            summary=dict(request.summary),
        )
        return coordinator_pb2.FinishJobResponse()


def _peer_host(context) -> str:
    """'ipv4:10.0.0.7:51234' -> '10.0.0.7' (a name for workers that send none)."""
    peer = context.peer() or ""
    host = peer.split(":", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host or socket.gethostname()

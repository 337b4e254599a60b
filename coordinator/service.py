"""The gRPC servicer: translates requests into Scheduler calls and refusals into statuses.

Handlers hold no state of their own and talk only to the Scheduler (never to the store or
the event bus): what a caller may see is decided here (tunefleet.coordinator.auth), what
happens to jobs and workers there. A CoordinatorError becomes its status: code, message
and structured details (field violations, the limit that was reached); anything else is logged with its traceback here and reaches the client only as
INTERNAL with a pointer to the coordinator's log.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import urllib.parse

import grpc

from tunefleet import limits
from tunefleet.coordinator import auth, gang
from tunefleet.coordinator.errors import (
    CoordinatorError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    invalid_spec,
)
from tunefleet.coordinator.scheduler import Scheduler
from tunefleet.status_details import QuotaViolation
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2

log = logging.getLogger(__name__)

# RegisterWorkerRequest.instance: a nonce (workers send 16 hex digits); it is kept in memory.
_MAX_INSTANCE_CHARS = 64
_INTERNAL_MESSAGE = "internal error in the coordinator; its log has the details"

# Jobs per ListJobs page (the most a request may ask for, and what 0 means).
MAX_LIST_PAGE = 1000
_JOB_STATES = frozenset(job_pb2.JobState.values())
_MAX_IDEMPOTENCY_KEY_CHARS = 256


def _unary(handler):
    @functools.wraps(handler)
    def wrapper(self, request, context):
        try:
            return handler(self, request, context)
        except CoordinatorError as exc:
            context.abort_with_status(exc.status())
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
            context.abort_with_status(exc.status())
        except Exception:
            log.exception("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE)

    return wrapper


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, scheduler: Scheduler, max_streams: int):
        self.scheduler = scheduler
        # Each open event stream holds a thread of the streams' own pool (see server.py);
        # one beyond this many is refused at once rather than queued behind the others.
        self.max_streams = max_streams
        self._stream_slots = threading.BoundedSemaphore(max_streams)

    # ---- client API ------------------------------------------------------------------

    @_unary
    def SubmitJob(self, request, context):
        key, submitter = self._checked_submit(request, context, "SubmitJobRequest")
        return self.scheduler.submit(request.spec, key, submitter=submitter)

    def _checked_submit(self, request, context, message: str) -> tuple[str, str]:
        """What SubmitJob and SubmitSweep check alike; returns (the idempotency key scoped
        to its caller, the submitter's name)."""
        if not request.HasField("spec"):
            raise InvalidArgument(f"{message}.spec is required")
        principal = auth.caller(context)
        key = request.idempotency_key
        if len(key) > _MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidArgument(
                f"{message}.idempotency_key: at most {_MAX_IDEMPOTENCY_KEY_CHARS} "
                f"characters, got {len(key):,}"
            )
        if key and principal is not None:
            key = f"{principal.name}/{key}"  # one caller's key never returns another's job
        model = request.spec.model
        if model.source == "job" and model.job:
            source = self.scheduler.find_source(model.job)
            if source is not None and not auth.may_see(principal, source.submitter):
                # Starting from another user's model would hand it over: as if it did not exist.
                what = "sweep" if model.job.startswith("sweep-") else "job"
                raise invalid_spec([("model.job", f"{what} {model.job} not found")])
        return key, principal.name if principal else ""

    @_unary
    def GetJob(self, request, context):
        return self._visible_job(context, request.job_id)

    @_unary
    def ListJobs(self, request, context):
        principal = auth.caller(context)
        mine = principal.name if principal and principal.role is not auth.Role.ADMIN else None
        for state in request.states:
            if state not in _JOB_STATES:
                raise InvalidArgument(f"ListJobsRequest.states: unknown state {state}")
        limit = request.limit if 0 < request.limit <= MAX_LIST_PAGE else MAX_LIST_PAGE
        offset = _page_offset(request.page_token)
        # One more than the page tells whether another page follows.
        jobs = self.scheduler.list_jobs(request.states, limit + 1, submitter=mine, offset=offset)
        more = len(jobs) > limit
        return coordinator_pb2.ListJobsResponse(
            jobs=[job_summary(job) for job in jobs[:limit]],
            next_page_token=f"{offset + limit}" if more else "",
        )

    @_unary
    def CancelJob(self, request, context):
        self._visible_job(context, request.job_id)
        return self.scheduler.cancel(request.job_id, request.reason)

    def _visible_job(self, context, job_id: str):
        """The job, if the caller may see it. Another user's job is NOT_FOUND, with the same
        message as a missing one, so job ids cannot be probed (see coordinator/auth.py)."""
        job = self.scheduler.get_job(job_id)
        if not auth.may_see(auth.caller(context), job.submitter):
            raise NotFound(f"job {job_id} not found")
        return job

    @_streaming
    def StreamEvents(self, request, context):
        for batch in self._event_batches(request, context):
            yield from batch

    @_streaming
    def StreamEventBatches(self, request, context):
        for batch in self._event_batches(request, context):
            yield coordinator_pb2.EventBatch(events=batch)

    def _event_batches(self, request, context):
        """Stored events with seq > after_seq, then (if follow) live ones until the job
        ends, as non-empty lists in seq order."""
        job_id = request.job_id
        self._visible_job(context, job_id)  # NOT_FOUND before anything is streamed
        if not self._stream_slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"the coordinator already streams events to {self.max_streams} followers "
                "(ftctl server --max-followers); follow again later",
                QuotaViolation("--max-followers", "event streams open at once", self.max_streams),
            )
        if not context.add_callback(self._stream_slots.release):  # it ended already
            self._stream_slots.release()
        yield from self.scheduler.follow_events(
            job_id,
            request.after_seq,
            follow=request.follow,
            is_active=context.is_active,
            # The client went away or we stop: the follower wakes and ends.
            on_subscribe=lambda subscription: context.add_callback(subscription.close),
        )

    # ---- sweeps (coordinator/sweeps.py) ---------------------------------------------------

    @_unary
    def SubmitSweep(self, request, context):
        key, submitter = self._checked_submit(request, context, "SubmitSweepRequest")
        return self.scheduler.sweeps.submit(request.spec, key, submitter=submitter)

    @_unary
    def GetSweep(self, request, context):
        self._visible_sweep(context, request.sweep_id)
        return self.scheduler.sweeps.get(request.sweep_id)

    @_unary
    def ListSweeps(self, request, context):
        principal = auth.caller(context)
        mine = principal.name if principal and principal.role is not auth.Role.ADMIN else None
        limit = request.limit if 0 < request.limit <= MAX_LIST_PAGE else MAX_LIST_PAGE
        return coordinator_pb2.ListSweepsResponse(
            sweeps=self.scheduler.sweeps.list(limit, submitter=mine)
        )

    @_unary
    def CancelSweep(self, request, context):
        self._visible_sweep(context, request.sweep_id)
        return self.scheduler.sweeps.cancel(request.sweep_id, request.reason)

    def _visible_sweep(self, context, sweep_id: str) -> None:
        """Another user's sweep is NOT_FOUND, like a missing one (as for jobs)."""
        row = self.scheduler.sweeps.find(sweep_id)
        if row is None or not auth.may_see(auth.caller(context), row.submitter):
            raise NotFound(f"sweep {sweep_id} not found")

    @_unary
    def DrainWorker(self, request, context):
        return self.scheduler.drain_worker(request.worker_id)

    @_unary
    def ListWorkers(self, request, context):
        workers = self.scheduler.list_workers()
        principal = auth.caller(context)
        if principal is not None and principal.role is not auth.Role.ADMIN:
            for worker in workers:  # a user sees capacity, but only its own jobs' ids
                own = [j for j in worker.job_ids if self._may_see_id(principal, j)]
                del worker.job_ids[:]
                worker.job_ids.extend(own)
        return coordinator_pb2.ListWorkersResponse(
            workers=workers, storage_uri=self.scheduler.storage_uri
        )

    def _may_see_id(self, principal, job_id: str) -> bool:
        job = self.scheduler.find_job(job_id)
        return job is not None and auth.may_see(principal, job.submitter)

    # ---- worker API ------------------------------------------------------------------

    @_unary
    def RegisterWorker(self, request, context):
        _check_registration(request)
        worker_id = self.scheduler.register_worker(
            request.worker_id,
            hostname=request.hostname or _peer_host(context),
            resources=request.resources,
            # Where the other members of a multi-node job reach it: what it says, else where
            # its connection comes from (an older worker, which sends nothing).
            address=request.address or _peer_ip(context),
            instance=request.instance,
        )
        return coordinator_pb2.RegisterWorkerResponse(
            worker_id=worker_id,
            heartbeat_interval_s=self.scheduler.heartbeat_interval_s,
            lease_timeout_s=self.scheduler.lease_timeout_s,
        )

    @_unary
    def Heartbeat(self, request, context):
        if request.leaving:
            self.scheduler.leave(request.worker_id, request.instance)
            return coordinator_pb2.HeartbeatResponse()
        cancel, lost, known, drain = self.scheduler.heartbeat(
            request.worker_id,
            request.running_job_ids,
            unhealthy_reason=limits.clip_chars(request.unhealthy_reason, limits.MAX_REASON_CHARS),
            instance=request.instance[:_MAX_INSTANCE_CHARS],
        )
        return coordinator_pb2.HeartbeatResponse(
            cancel_job_ids=cancel, lost_job_ids=lost, known=known, drain=drain
        )

    @_unary
    def AcquireJob(self, request, context):
        job = self.scheduler.acquire(
            request.worker_id,
            request.wait_seconds,
            context.is_active,
            rendezvous_port=request.rendezvous_port,
        )
        if job is None:
            return coordinator_pb2.AcquireJobResponse()
        return coordinator_pb2.AcquireJobResponse(
            assignment=gang.assignment(job, request.worker_id)
        )

    @_unary
    def ReportEvents(self, request, context):
        reported = self.scheduler.report(
            request.worker_id, request.job_id, request.attempt, request.events, request.batch_seq
        )
        return coordinator_pb2.ReportEventsResponse(last_seq=reported.last_seq, stop=reported.stop)

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
            retryable=request.retryable,
        )
        return coordinator_pb2.FinishJobResponse()

    @_unary
    def ReleaseJob(self, request, context):
        self.scheduler.release(request.worker_id, request.job_id, request.attempt, request.reason)
        return coordinator_pb2.ReleaseJobResponse()


def job_summary(job: job_pb2.Job) -> job_pb2.Job:
    """`job` with only the parts of its spec a listing shows: a page of 1,000 jobs stays a
    few hundred KB whatever their specs hold (labels may take up to the 1 MiB limit)."""
    summary = job_pb2.Job()
    summary.CopyFrom(job)
    full = job.spec
    spec = summary.spec
    spec.Clear()
    spec.name = full.name
    if full.HasField("priority"):
        spec.priority = full.priority
    spec.resources.CopyFrom(full.resources)
    spec.model.source, spec.model.name, spec.model.job = (
        full.model.source,
        full.model.name,
        full.model.job,
    )
    spec.data.source, spec.data.name, spec.data.train = (
        full.data.source,
        full.data.name,
        full.data.train,
    )
    spec.finetune.strategy = full.finetune.strategy
    return summary


def _check_registration(request) -> None:
    """What a worker says about itself is shown to every user (`ftctl workers`) and decides
    placements: refuse what no real worker sends."""
    problems = []
    if request.worker_id and not limits.is_safe_name(request.worker_id, limits.MAX_WORKER_ID_CHARS):
        problems.append(
            f"worker_id {limits.quote(request.worker_id)}: at most "
            f"{limits.MAX_WORKER_ID_CHARS} characters, {limits.NAME_RULE}"
        )
    if len(request.instance) > _MAX_INSTANCE_CHARS or not request.instance.isprintable():
        problems.append(
            f"instance {limits.quote(request.instance)}: at most {_MAX_INSTANCE_CHARS} "
            "printable characters"
        )
    for field in ("hostname", "address"):
        value = getattr(request, field)
        if len(value) > limits.MAX_HOSTNAME_CHARS or not value.isprintable():
            problems.append(
                f"{field} {limits.quote(value)}: at most {limits.MAX_HOSTNAME_CHARS} "
                "printable characters"
            )
    r = request.resources
    if not 0 <= r.gpus <= 4096 or not 0 <= r.cpus <= 1_000_000:
        problems.append(f"resources: gpus ({r.gpus}) and cpus ({r.cpus}) must be >= 0")
    if len(r.gpu_name) > 200 or not r.gpu_name.isprintable():
        problems.append(f"resources.gpu_name {limits.quote(r.gpu_name)}: at most 200 characters")
    if problems:
        raise InvalidArgument("RegisterWorkerRequest: " + "; ".join(problems))


def _page_offset(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 12:
        raise InvalidArgument("ListJobsRequest.page_token: not a token this coordinator issued")
    return int(token)


def _peer_host(context) -> str:
    """'ipv4:10.0.0.7:51234' -> '10.0.0.7' (a name for workers that send none)."""
    peer = context.peer() or ""
    host = peer.split(":", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host or socket.gethostname()


def _peer_ip(context) -> str:
    """'ipv4:10.0.0.7:51234' -> '10.0.0.7', 'ipv6:[::1]:5' -> '::1'; '' for other peers."""
    kind, _, rest = urllib.parse.unquote(context.peer() or "").partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    return rest.rpartition(":")[0].strip("[]")

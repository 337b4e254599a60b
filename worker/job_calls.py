"""What a worker tells the coordinator about the attempt it runs: its events
(ReportEvents), how it ended (FinishJob) or that it goes back to the queue (ReleaseJob).

Every call names the attempt, the fencing token: once the coordinator has requeued a job,
the old attempt's calls are refused (FAILED_PRECONDITION) and dropped here quietly. A
report's reply may ask to stop the job (cancelled, or pruned by its sweep on the metrics
just sent), which stops it at once rather than at the next heartbeat.

A mixin of WorkerDaemon (worker/daemon.py), whose `_call` retries through outages, whose
`_runner` is the attempt running now and whose `_lock` guards it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from tunefleet.limits import MAX_EVENT_TEXT_BYTES, bound_event, clip_chars
from tunefleet.v1 import coordinator_pb2, job_pb2
from tunefleet.worker.job_runner import JobOutcome, JobRunner

log = logging.getLogger("tunefleet.worker.daemon")

# The coordinator says this attempt is not ours any more: drop it quietly.
_NOT_OURS = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})
# After stop(), how long we keep trying to tell the coordinator how the job ended.
_STOP_PATIENCE_S = 10.0


class JobCalls:
    worker_id: str
    lease_timeout_s: float
    _lock: threading.Lock
    _runner: JobRunner | None

    _call: Callable[..., object]  # WorkerDaemon's: retried through outages

    def _report(
        self, job_id: str, attempt: int, events: list[job_pb2.Event], batch_seq: int = 0
    ) -> bool:
        for event in events:  # the engine bounds its events; this covers the runner's own
            if event.ByteSize() > MAX_EVENT_TEXT_BYTES:
                bound_event(event)
        request = coordinator_pb2.ReportEventsRequest(
            worker_id=self.worker_id,
            job_id=job_id,
            attempt=attempt,
            events=events,
            batch_seq=batch_seq,
        )
        try:
            # Never retried forever: the relay loop waits on this call, and with it the
            # job's cancel (the lease is watched on a thread of its own). A coordinator
            # outage this long is past any lease: the job will be requeued, and its next
            # attempt sends the metrics again from the event files.
            response = self._call(
                "ReportEvents", request, give_up_after_s=max(6 * self.lease_timeout_s, 60)
            )
        except grpc.RpcError as exc:
            if exc.code() in _NOT_OURS:
                log.warning("job %s: %s", job_id, exc.details())
                return False
            # Stopping with the coordinator unreachable, or a batch it refuses: the events
            # are lost, the job itself goes on.
            log.error(
                "job %s: dropped %d events: %s %s",
                job_id,
                len(events),
                exc.code().name,
                clip_chars(exc.details() or "", 300),
            )
            return True
        if response.stop:
            self._stop_job(job_id, attempt)
        return True

    def _stop_job(self, job_id: str, attempt: int) -> None:
        """The coordinator's reply to a report asks to stop the job (cancelled, or a sweep
        pruned it on the metrics just sent): as the heartbeat's cancel would, without
        waiting up to a heartbeat interval for it."""
        with self._lock:
            runner = self._runner
        if runner is None or runner.done or (runner.job_id, runner.attempt) != (job_id, attempt):
            return
        log.info("job %s: stop requested by the coordinator", job_id)
        runner.cancel()

    def _finish(self, job_id: str, attempt: int, outcome: JobOutcome) -> None:
        request = coordinator_pb2.FinishJobRequest(
            worker_id=self.worker_id,
            job_id=job_id,
            attempt=attempt,
            state=outcome.state,
            reason=outcome.reason,
            artifacts=outcome.artifacts,
            summary=outcome.summary,
            retryable=outcome.retryable,
        )
        if self._tell("FinishJob", job_id, request):
            log.info(
                "job %s attempt %d ended %s %s",
                job_id,
                attempt,
                job_pb2.JobState.Name(outcome.state),
                outcome.reason,
            )

    def _release(self, job_id: str, attempt: int, reason: str) -> None:
        request = coordinator_pb2.ReleaseJobRequest(
            worker_id=self.worker_id, job_id=job_id, attempt=attempt, reason=reason
        )
        if self._tell("ReleaseJob", job_id, request):
            log.info("job %s attempt %d released: %s", job_id, attempt, reason)

    def _tell(self, method: str, job_id: str, request) -> bool:
        """How an attempt ended; False if the coordinator did not take it."""
        try:
            self._call(method, request, patience_after_stop_s=_STOP_PATIENCE_S)
        except grpc.RpcError as exc:
            # FAILED_PRECONDITION: the attempt was fenced off (requeued meanwhile).
            level = logging.INFO if exc.code() in _NOT_OURS else logging.ERROR
            log.log(level, "job %s: could not report its end: %s", job_id, exc.details())
            return False
        return True

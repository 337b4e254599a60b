"""Workers' membership, for the Scheduler (scheduler.py, a mixin of it): registration,
heartbeats (the lease, health, which jobs a worker must stop), drains, sign-offs and the
views `ftctl workers` shows. Every method takes the Scheduler's one lock, as its own do;
which process holds a worker id is worker_instances.py's to say.
"""

from __future__ import annotations

import logging
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterable

from tunefleet.coordinator import gang, placement
from tunefleet.coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from tunefleet.coordinator.lifecycle import JobLifecycle
from tunefleet.coordinator.store import JobStore, WorkerRecord
from tunefleet.coordinator.worker_instances import WorkerInstances
from tunefleet.v1 import coordinator_pb2, job_pb2

log = logging.getLogger("tunefleet.coordinator.scheduler")


class WorkerMembership:
    # The Scheduler's (scheduler.py).
    store: JobStore
    lease_timeout_s: float
    _lock: threading.RLock
    _clock: Callable[[], float]
    _unhealthy: dict[str, str]
    _instances: WorkerInstances
    _waiting: gang.WaitingWorkers
    _jobs: JobLifecycle
    _work_available: threading.Condition
    _changed: Callable[[], None]

    def list_workers(self) -> list[coordinator_pb2.Worker]:
        active = gang.by_holder(self.store.active_jobs())
        return [
            self._worker_view(record, active.get(record.id, ()))
            for record in self.store.list_workers()
        ]

    def drain_worker(self, worker_id: str) -> coordinator_pb2.Worker:
        """Marks a live worker DRAINING: it is placed nothing more, and its next heartbeat
        tells it to checkpoint and hand back its job, then exit. Draining twice is a no-op."""
        if not worker_id:
            raise InvalidArgument("DrainWorkerRequest.worker_id is required")
        with self._lock:
            worker = self.store.get_worker(worker_id)
            if worker is None:
                raise NotFound(f"worker {worker_id} not found; `ftctl workers` lists them")
            if worker.state == coordinator_pb2.LOST:
                raise FailedPrecondition(f"worker {worker_id} is lost; there is nothing to drain")
            if worker.state != coordinator_pb2.DRAINING:
                self.store.set_worker_state(worker_id, coordinator_pb2.DRAINING)
                log.info("worker %s: drain requested", worker_id)
            worker = self.store.get_worker(worker_id)
            return self._worker_view(worker, self.store.active_jobs(worker_id))

    def _worker_view(
        self, record: WorkerRecord, active: Iterable[job_pb2.Job]
    ) -> coordinator_pb2.Worker:
        return placement.worker_view(
            record,
            active,
            now=self._clock(),
            unhealthy_reason=self._unhealthy.get(record.id, ""),
        )

    # ---- worker API ------------------------------------------------------------------

    def register_worker(
        self,
        worker_id: str,
        *,
        hostname: str = "",
        resources: coordinator_pb2.WorkerResources | None = None,
        address: str = "",
        instance: str = "",
    ) -> str:
        resources = resources or coordinator_pb2.WorkerResources()
        with self._lock:
            worker_id = worker_id or self._new_worker_id(hostname)
            previous = self.store.get_worker(worker_id)
            # Raises WorkerIdInUse while another live process holds the id.
            takeover = self._instances.register(worker_id, instance, previous)
            self._unhealthy.pop(worker_id, None)  # its heartbeats say so again if it still is
            self._waiting.take(worker_id)  # a part handed to its previous life is void
            if previous is not None:
                # The worker process restarted: whatever it ran before is gone with it.
                for job in self.store.active_jobs(worker_id):
                    self._jobs.release(job, f"worker {worker_id} restarted", detail=takeover)
            self.store.upsert_worker(
                WorkerRecord(
                    id=worker_id,
                    hostname=hostname,
                    resources=resources,
                    state=coordinator_pb2.LIVE,
                    last_heartbeat=self._clock(),
                    address=address,
                )
            )
            log.info("worker %s registered (%s, %d GPUs)", worker_id, hostname, resources.gpus)
            self._changed()
            return worker_id

    def heartbeat(
        self,
        worker_id: str,
        running_job_ids: Iterable[str],
        *,
        unhealthy_reason: str = "",
        instance: str = "",
    ) -> tuple[list[str], list[str], bool, bool]:
        """Renews the worker's lease and records whether it can take jobs; returns (job ids
        it must stop, the part of those that are no longer its own, whether it is known,
        whether it must drain). WorkerIdInUse: another process holds the id."""
        running = set(running_job_ids)
        with self._lock:
            worker = self.store.get_worker(worker_id)
            if worker is None or worker.state == coordinator_pb2.LOST:
                return sorted(running), sorted(running), False, False
            self._instances.check_heartbeat(worker_id, instance, worker)
            if unhealthy_reason != self._unhealthy.get(worker_id, ""):
                if unhealthy_reason:
                    log.warning("worker %s unhealthy: %s", worker_id, unhealthy_reason)
                    self._unhealthy[worker_id] = unhealthy_reason
                else:
                    log.info("worker %s healthy again", worker_id)
                    del self._unhealthy[worker_id]
                    self._work_available.notify_all()
            now = self._clock()
            self.store.touch_worker(worker_id, now)
            mine = {job.id: job for job in self.store.active_jobs(worker_id)}
            lost = {
                job_id
                for job_id in running
                if job_id not in mine and not self._member_finishing(job_id, worker_id, now)
            }
            stop = lost | {job.id for job in mine.values() if job.cancel_requested}
            for job in mine.values():
                if job.id not in running:
                    self._jobs.release_if_silent(job, worker_id, now, self.lease_timeout_s)
            return sorted(stop), sorted(lost), True, worker.state == coordinator_pb2.DRAINING

    def leave(self, worker_id: str, instance: str = "") -> None:
        """Forgets a worker that exits on purpose (stopped or drained), so that LOST means
        vanished: every routine stop (a rollout, a Slurm allocation's end, a scale-down)
        used to leave a LOST worker behind for ever, and `tunefleet_workers{state="LOST"}
        > 0` alerted on it. A job it still holds goes back to the queue, as if lost."""
        with self._lock:
            if self.store.get_worker(worker_id) is None:
                return
            if not self._instances.holds(worker_id, instance):
                return  # a process that never held the id, or lost it: not its to end
            self._instances.forget(worker_id)
            for job in self.store.active_jobs(worker_id):
                self._jobs.release(job, "worker stopped", detail=f"worker {worker_id} stopped")
            self.store.delete_worker(worker_id)
            self._unhealthy.pop(worker_id, None)
            log.info("worker %s stopped and signed off", worker_id)
            self._changed()

    def _member_finishing(self, job_id: str, worker_id: str, now: float) -> bool:
        job = self.store.get_job(job_id)
        return job is not None and gang.finishing(job, worker_id, now, self.lease_timeout_s)

    def _new_worker_id(self, hostname: str) -> str:
        base = re.sub(r"[^A-Za-z0-9-]+", "-", hostname or socket.gethostname()).strip("-")
        while True:
            worker_id = f"{base or 'worker'}-{secrets.token_hex(2)}"
            if self.store.get_worker(worker_id) is None:
                return worker_id

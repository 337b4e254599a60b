"""WorkerInstances: which worker process holds each worker id, so that two processes started
with one `--id` (a copied systemd unit, two `ftctl worker --id gpu-1`) are told apart.

Before, the second process's registration looked like a restart of the first: the first's
job was requeued ("worker restarted"), and each heartbeat of one listed a job the other
did not run, so attempts bounced between them and nothing said why. Now every worker
process sends a random nonce made at its start (RegisterWorkerRequest.instance, and the
same in its heartbeats), and the coordinator remembers the nonce of the process that holds
each id. A registration or heartbeat from another nonce while the holder is live is refused
with WorkerIdInUse (ALREADY_EXISTS), which the worker turns into a one-line error at start.

When a new process may take the id over (`takeover_after_s`): a worker killed with
kill -9 and restarted at once by systemd comes back with a new nonce while its old lease
still runs (lease_timeout_s, 10 s by default). Refusing it for the whole lease would lock
a restarted worker out (and make a Restart= loop hit systemd's start limit); accepting it
at once would hand a live twin's id to the newcomer. The holder proves it is alive by
heartbeating every heartbeat_interval_s, so one that has been silent for an interval plus a
margin (another interval, at least 1 s, for a slow network or a busy coordinator) is taken
to be dead: the new process gets the id and the old one's jobs are requeued, as a restart's
always were. The refused worker retries for that long before giving up (worker/daemon.py),
so a restart right after kill -9 is accepted within a few seconds and a twin still stops.
A holder that was only paused and heartbeats again after the takeover is refused in turn,
and stops (its job was requeued; the attempt number fences its late reports).

Only registration takes an id over; a heartbeat from a non-holder is always refused while
the coordinator knows the holder, so a taken-over process cannot take it back silently.
The holders live in memory: after a coordinator restart the first process that heartbeats
or registers (the registration judged by the stored last heartbeat) becomes the holder.
Requests without an instance (older workers) are never checked, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tunefleet.coordinator.errors import WorkerIdInUse
from tunefleet.coordinator.store import WorkerRecord
from tunefleet.v1 import coordinator_pb2

# The control plane logs under one name (see lifecycle.py).
log = logging.getLogger("tunefleet.coordinator.scheduler")


class WorkerInstances:
    """The nonce of the process holding each worker id; call with the Scheduler's lock."""

    def __init__(
        self, *, clock: Callable[[], float], heartbeat_interval_s: float, lease_timeout_s: float
    ):
        self._clock = clock
        # Past the lease the holder is LOST anyway, and a LOST id is free.
        self.takeover_after_s = min(
            heartbeat_interval_s + max(heartbeat_interval_s, 1.0), lease_timeout_s
        )
        self._holders: dict[str, str] = {}

    def register(self, worker_id: str, instance: str, record: WorkerRecord | None) -> str:
        """Records `instance` as the holder of `worker_id`, or raises WorkerIdInUse while
        another live process holds it. Returns why a previous process's jobs are void when
        this is a takeover of an id whose holder went silent ("" otherwise)."""
        if not instance:
            self._holders.pop(worker_id, None)  # an older worker: nothing to compare with
            return ""
        holder = self._holders.get(worker_id)
        if record is None or record.state == coordinator_pb2.LOST or holder == instance:
            self._holders[worker_id] = instance
            return ""
        silent_for = self._clock() - record.last_heartbeat
        if silent_for <= self.takeover_after_s:
            raise self._in_use(worker_id, record, silent_for)
        self._holders[worker_id] = instance
        return (
            f"a new process registered as worker {worker_id}; the previous one sent no "
            f"heartbeat for {silent_for:.1f} s"
        )

    def check_heartbeat(self, worker_id: str, instance: str, record: WorkerRecord) -> None:
        """Raises WorkerIdInUse for a heartbeat from a process that does not hold the id."""
        if not instance:
            return
        holder = self._holders.setdefault(worker_id, instance)  # first after our restart
        if holder != instance:
            raise self._in_use(worker_id, record, self._clock() - record.last_heartbeat)

    def holds(self, worker_id: str, instance: str) -> bool:
        """Whether a `leaving` heartbeat from `instance` may sign the worker off."""
        holder = self._holders.get(worker_id)
        return not instance or holder is None or holder == instance

    def forget(self, worker_id: str) -> None:
        self._holders.pop(worker_id, None)

    def _in_use(self, worker_id: str, record: WorkerRecord, silent_for: float) -> WorkerIdInUse:
        host = f" on {record.hostname}" if record.hostname else ""
        log.warning(
            "worker %s: refused another process (the id is held by a live one%s)", worker_id, host
        )
        return WorkerIdInUse(
            f"worker id {worker_id} is in use by another worker process{host} (last heartbeat "
            f"{max(silent_for, 0.0):.1f} s ago): give each worker its own --id",
            worker_id=worker_id,
            hostname=record.hostname,
            takeover_after_s=self.takeover_after_s,
        )

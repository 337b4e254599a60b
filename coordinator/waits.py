"""WaitReasons: keeps each queued job's reason saying what it waits for ("waiting for a
worker with 4 free GPUs"), so `ftctl get` answers why a job is not running.

The reasons themselves come from placement.explain_waits (pure); this decides when to
compute them. A pass reads every worker, active job and queued job. Up to
_EXPLAIN_AT_ONCE of them it runs at once, under the Scheduler's lock, on every change. A
larger fleet is explained by the lease watch, at most once per period and outside the
lock: placements must not wait for scans of thousands of rows, and a reason is advice
that may lag a second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tunefleet.coordinator import gang, placement
from tunefleet.coordinator.placement import Capacity
from tunefleet.coordinator.store import JobStore
from tunefleet.v1 import coordinator_pb2, job_pb2

# Fleets up to this size (workers + active + queued jobs) are explained on every change;
# larger ones by the lease watch.
_EXPLAIN_AT_ONCE = 256


class WaitReasons:
    def __init__(
        self,
        store: JobStore,
        unhealthy: Mapping[str, str],
        *,
        clock: Callable[[], float],
        source_job: Callable[[str], job_pb2.Job | None],
    ):
        self.store = store
        self._source_job = source_job  # a job or a sweep, by the id model.job names
        self._unhealthy = unhealthy  # the Scheduler's: workers that take no jobs now
        self._clock = clock
        self.pending = False  # a change awaits the lease watch's pass
        self._size = 0  # of the fleet at the last pass
        self._needs: dict[str, placement.Need] = {}  # queued job id -> placement.need(spec)

    def changed(self) -> dict[str, str]:
        """The queue or the fleet changed (call with the Scheduler's lock held): explain
        now, or leave it to the lease watch when the fleet is large. Returns the reasons
        set now, by job id."""
        if self._size > _EXPLAIN_AT_ONCE:
            self.pending = True
            return {}
        return self.explain()

    def explain(self) -> dict[str, str]:
        """One pass: sets the reasons that changed, and returns them (the lease watch calls
        it outside the lock for a pending change)."""
        self.pending = False
        queued = self.store.queued_brief()
        if not queued:  # nothing waits: no need to read the fleet
            self._size = 0
            return {}
        live = [
            w
            for w in self.store.list_workers()
            if w.state == coordinator_pb2.LIVE and w.id not in self._unhealthy
        ]
        active = gang.by_holder(self.store.active_jobs())
        self._size = len(live) + sum(map(len, active.values())) + len(queued)
        reasons, self._needs = placement.explain_waits(
            queued,
            [Capacity(w, active.get(w.id, ())) for w in live],
            now=self._clock(),
            source_job=self._source_job,
            known_needs=self._needs,
        )
        if reasons:
            self.store.set_reasons(reasons, now=self._clock())
        return reasons

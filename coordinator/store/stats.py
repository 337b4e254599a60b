"""Aggregates over the jobs table for /metrics (tunefleet.coordinator.metrics).

Computed in SQL over a read-only connection of their own, so a scrape neither loads every
job nor holds the store's lock while it scans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunefleet.coordinator.store.database import Database
from tunefleet.v1 import job_pb2


@dataclass(frozen=True)
class JobStats:
    by_state: dict[int, int]  # JobState -> how many jobs are in it
    queue_depth: int  # QUEUED jobs
    oldest_queued_at: float | None  # created_at of the oldest QUEUED job
    started: int  # jobs that started training (started_at is set)
    wait_sum_s: float  # their seconds from submission to the start of training, summed
    wait_cumulative: list[int]  # how many of them waited <= each bucket bound


class StatsQueries(Database):
    def job_stats(self, wait_buckets: Sequence[float]) -> JobStats:
        """Job counts by state, the queue, and how long started jobs waited (cumulative
        counts per bound in `wait_buckets`, as a Prometheus histogram wants them). Raises
        sqlite3.Error when the database cannot be read."""
        bucket_sums = ", ".join(f"SUM(wait <= {float(b)})" for b in wait_buckets)
        with self._read_only() as db:
            by_state = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
            depth, oldest = db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM jobs WHERE state = ?", (job_pb2.QUEUED,)
            ).fetchone()
            # started_at is when training began (the first report from the worker).
            count, total, *cumulative = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(wait), 0), {bucket_sums} FROM "
                "(SELECT MAX(started_at - created_at, 0) AS wait FROM jobs "
                "WHERE started_at IS NOT NULL)"
            ).fetchone()
        return JobStats(
            by_state=by_state,
            queue_depth=depth,
            oldest_queued_at=oldest,
            started=count,
            wait_sum_s=total,
            wait_cumulative=[c or 0 for c in cumulative],
        )

"""JobStore: the coordinator's durable state (jobs, their events, workers) in SQLite, and
the only code in the coordinator that speaks SQL.

Split by table, one module each, all on one connection (database.py):

    database.py  schema, migrations, the connection, transactions (atomic: group commit)
    rows.py      rows <-> messages, and the event log's numbering (shared by the tables)
    jobs.py      jobs and job_members: rows, state changes, placement and listing queries
    events.py    events: appends, a worker's report batches, replays
    workers.py   workers: registration, heartbeats, leases
    sweeps.py    sweeps and their trials' sampler records (the optuna study's memory)
    stats.py     aggregates for /metrics, on a read-only connection of their own

Every method is one transaction. The store keeps what the stored data must satisfy (a
state change and its event together, seqs without gaps, a report batch or a metrics step
stored once: see events.py) and checks nothing about the job lifecycle: the Scheduler
decides which transitions are legal and calls the store while holding its own lock, so a
read-check-write sequence there is atomic.
"""

from tunefleet.coordinator.store.database import SCHEMA_VERSION
from tunefleet.coordinator.store.events import EventTable
from tunefleet.coordinator.store.jobs import JobTable
from tunefleet.coordinator.store.rows import WorkerRecord
from tunefleet.coordinator.store.stats import JobStats, StatsQueries
from tunefleet.coordinator.store.sweeps import SweepRow, SweepTable, TrialRow
from tunefleet.coordinator.store.workers import WorkerTable

__all__ = ["SCHEMA_VERSION", "JobStats", "JobStore", "SweepRow", "TrialRow", "WorkerRecord"]


class JobStore(JobTable, EventTable, WorkerTable, StatsQueries, SweepTable):
    """Jobs, events and workers; survives coordinator restarts. One connection and one
    lock (Database) under all four tables' methods."""

"""JobStore: the coordinator's durable state (jobs, their events, workers) in SQLite.

Every method is one transaction. The store checks nothing about the job lifecycle: the
Scheduler decides which transitions are legal and calls the store while holding its own
lock, so a read-check-write sequence there is atomic.

One connection, guarded by a lock: the coordinator's write rate is low (batched event
reports, heartbeats), and a single connection keeps transactions trivially serialised.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunefleet.v1 import coordinator_pb2, job_pb2, spec_pb2

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    spec             BLOB NOT NULL,
    state            INTEGER NOT NULL,
    reason           TEXT NOT NULL DEFAULT '',
    attempt          INTEGER NOT NULL DEFAULT 0,
    priority         INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    updated_at       REAL NOT NULL,
    worker_id        TEXT NOT NULL DEFAULT '',
    artifacts        TEXT NOT NULL DEFAULT '{}',
    summary          TEXT NOT NULL DEFAULT '{}',
    last_seq         INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT UNIQUE,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    -- model.source == "job": the job whose model this one starts from.
    source_job       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, priority DESC, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_worker ON jobs (worker_id, state);
CREATE INDEX IF NOT EXISTS jobs_by_source ON jobs (source_job);

CREATE TABLE IF NOT EXISTS events (
    job_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    time    REAL NOT NULL,
    blob    BLOB NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS workers (
    id             TEXT PRIMARY KEY,
    hostname       TEXT NOT NULL DEFAULT '',
    resources      BLOB NOT NULL,
    state          INTEGER NOT NULL,
    last_heartbeat REAL NOT NULL,
    address        TEXT NOT NULL DEFAULT ''
);
"""

_JOB_COLUMNS = (
    "id, spec, state, reason, attempt, created_at, started_at, finished_at, updated_at, "
    "worker_id, artifacts, summary, last_seq, cancel_requested, submitter, restarts, not_before"
)

# Columns added after schema version 1 shipped; older databases gain them in place.
_ADDED_JOB_COLUMNS = {
    "submitter": "TEXT NOT NULL DEFAULT ''",
    # Crash restarts so far (train.max_restarts caps them) and, while a retry backs off,
    # the time before which the job is not placed.
    "restarts": "INTEGER NOT NULL DEFAULT 0",
    "not_before": "REAL NOT NULL DEFAULT 0",
    # The last ReportEvents batch_seq stored for the current attempt: a retried batch
    # (its reply was lost, e.g. in a coordinator crash) is recognised and not stored twice.
    "report_batch": "INTEGER NOT NULL DEFAULT 0",
    # {"train": step, "eval": step}: the highest metrics step stored per phase, over all
    # attempts. A resumed attempt replays the steps after its checkpoint; metrics the
    # user already saw are not stored again (see append_report).
    "metric_steps": "TEXT NOT NULL DEFAULT '{}'",
}

ACTIVE_STATES = (job_pb2.ASSIGNED, job_pb2.RUNNING)


@dataclass(frozen=True)
class WorkerRecord:
    id: str
    hostname: str
    resources: coordinator_pb2.WorkerResources
    state: int
    last_heartbeat: float
    address: str


def _set_time(field, t: float | None) -> None:
    if t is not None:
        field.FromNanoseconds(round(t * 1e9))


def _job_from_row(row: tuple) -> job_pb2.Job:
    (
        job_id,
        spec,
        state,
        reason,
        attempt,
        created_at,
        started_at,
        finished_at,
        updated_at,
        worker_id,
        artifacts,
        summary,
        last_seq,
        cancel_requested,
        submitter,
        restarts,
        not_before,
    ) = row
    job = job_pb2.Job(
        id=job_id,
        spec=spec_pb2.JobSpec.FromString(spec),
        state=state,
        reason=reason,
        attempt=attempt,
        worker_id=worker_id,
        artifacts=json.loads(artifacts),
        summary=json.loads(summary),
        last_seq=last_seq,
        cancel_requested=bool(cancel_requested),
        submitter=submitter,
        restarts=restarts,
    )
    _set_time(job.not_before, not_before or None)
    _set_time(job.created_at, created_at)
    _set_time(job.started_at, started_at)
    _set_time(job.finished_at, finished_at)
    _set_time(job.updated_at, updated_at)
    return job


def _worker_from_row(row: tuple) -> WorkerRecord:
    worker_id, hostname, resources, state, last_heartbeat, address = row
    return WorkerRecord(
        id=worker_id,
        hostname=hostname,
        resources=coordinator_pb2.WorkerResources.FromString(resources),
        state=state,
        last_heartbeat=last_heartbeat,
        address=address,
    )


# Job fields callers may change, with how each is stored.
_FIELD_ENCODERS = {
    "reason": str,
    "attempt": int,
    "worker_id": str,
    "started_at": float,
    "finished_at": float,
    "artifacts": lambda d: json.dumps(dict(d), sort_keys=True),
    "summary": lambda d: json.dumps(dict(d), sort_keys=True),
    "cancel_requested": int,
    "spec": lambda s: s.SerializeToString(),
    "restarts": int,
    "not_before": float,
    "report_batch": int,
}


class JobStore:
    """Jobs, events and workers; survives coordinator restarts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see _tx).
        self._conn = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss. A job
        # id we returned to a user, or a state change a worker acted on, must not vanish; the
        # cost (one fsync per commit) is small because workers batch their event reports.
        self._conn.execute("PRAGMA synchronous=FULL")
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version not in (0, SCHEMA_VERSION):
            raise RuntimeError(
                f"{self.path} has schema version {version}; this coordinator knows version "
                f"{SCHEMA_VERSION}"
            )
        self._conn.executescript(_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        for name, declaration in _ADDED_JOB_COLUMNS.items():
            if name not in columns:
                self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    # ---- jobs -------------------------------------------------------------------------

    def insert_job(
        self,
        job_id: str,
        spec: spec_pb2.JobSpec,
        *,
        reason: str,
        idempotency_key: str = "",
        source_job: str = "",
        submitter: str = "",
        now: float | None = None,
    ) -> tuple[job_pb2.Job, job_pb2.Event]:
        """Creates a QUEUED job and its first state_change event (seq 1)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, spec, state, reason, priority, created_at, updated_at, "
                "idempotency_key, source_job, submitter) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    spec.SerializeToString(),
                    job_pb2.QUEUED,
                    reason,
                    spec.priority,
                    now,
                    now,
                    idempotency_key or None,
                    source_job,
                    submitter,
                ),
            )
            event = self._append_state_change(db, job_id, 0, job_pb2.QUEUED, reason, now)
            return self._get_job(db, job_id), event

    def transition(
        self,
        job_id: str,
        state: int,
        reason: str,
        *,
        now: float | None = None,
        notes: Iterable[job_pb2.Event] = (),
        **fields,
    ) -> tuple[job_pb2.Job, job_pb2.Event]:
        """Moves a job to `state` and appends the matching state_change event, atomically.
        `notes` (log events explaining the change) are stored just before it, with the
        attempt they are about."""
        now = time.time() if now is None else now
        with self._tx() as db:
            (attempt,) = db.execute("SELECT attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()
            for note in notes:
                self._append(db, job_id, attempt, note, now)
            self._update(db, job_id, now, dict(fields, reason=reason), state=state)
            (attempt,) = db.execute("SELECT attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()
            event = self._append_state_change(db, job_id, attempt, state, reason, now)
            return self._get_job(db, job_id), event

    def update_job(self, job_id: str, *, now: float | None = None, **fields) -> job_pb2.Job:
        """Changes fields without a state change (a waiting reason, cancel_requested...)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            self._update(db, job_id, now, fields)
            return self._get_job(db, job_id)

    def append_events(
        self,
        job_id: str,
        attempt: int,
        events: Iterable[job_pb2.Event],
        *,
        now: float | None = None,
    ) -> list[job_pb2.Event]:
        """Stores events with the next seqs; returns them as stored (job_id/seq/attempt set)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            stored = self._append_many(db, job_id, attempt, events, now)
            if stored:
                db.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (now, job_id))
            return stored

    def append_report(
        self,
        job_id: str,
        attempt: int,
        batch_seq: int,
        events: Iterable[job_pb2.Event],
        *,
        now: float | None = None,
    ) -> tuple[list[job_pb2.Event], bool]:
        """Stores a worker's batch of events; returns (the events stored, whether the batch
        was a retry of one already stored and so stored nothing).

        A metrics event whose step is not above the highest step of its phase stored so
        far is dropped: after a resume, the new attempt replays the steps between its
        checkpoint and where the previous attempt stopped, and a follower must not see a
        step twice. Within one attempt the steps of a phase only grow, so nothing else is
        ever dropped. Deduplication and the step high-water mark change in the same
        transaction as the events, so a crash cannot separate them.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            last_batch, marks = db.execute(
                "SELECT report_batch, metric_steps FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if 0 < batch_seq <= last_batch:
                return [], True
            steps: dict[str, int] = json.loads(marks)
            kept = []
            for event in events:
                if event.WhichOneof("kind") == "metrics":
                    phase, step = event.metrics.phase, event.metrics.step
                    if phase in steps and step <= steps[phase]:
                        continue
                    steps[phase] = step
                kept.append(event)
            stored = self._append_many(db, job_id, attempt, kept, now)
            db.execute(
                "UPDATE jobs SET report_batch = ?, metric_steps = ?, updated_at = ? WHERE id = ?",
                (max(batch_seq, last_batch), json.dumps(steps, sort_keys=True), now, job_id),
            )
            return stored, False

    def get_job(self, job_id: str) -> job_pb2.Job | None:
        with self._lock:
            return self._get_job(self._conn, job_id)

    def find_by_idempotency_key(self, key: str) -> job_pb2.Job | None:
        rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?", (key,))
        return _job_from_row(rows[0]) if rows else None

    def list_jobs(
        self, states: Iterable[int] = (), limit: int = 0, *, submitter: str | None = None
    ) -> list[job_pb2.Job]:
        """Newest first; all states when `states` is empty; all jobs when limit <= 0; only
        `submitter`'s jobs when given."""
        states = list(states)
        conditions = [f"state IN ({','.join('?' * len(states))})"] if states else []
        args: list = list(states)
        if submitter is not None:
            conditions.append("submitter = ?")
            args.append(submitter)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._query(
            f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            [*args, limit if limit > 0 else -1],
        )
        return [_job_from_row(r) for r in rows]

    def queued_jobs(self) -> list[job_pb2.Job]:
        """QUEUED jobs in placement order: higher priority first, then the oldest."""
        rows = self._query(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? "
            "ORDER BY priority DESC, created_at ASC, rowid ASC",
            (job_pb2.QUEUED,),
        )
        return [_job_from_row(r) for r in rows]

    def iter_queued(self, page: int = 16) -> Iterator[job_pb2.Job]:
        """queued_jobs(), decoded a page at a time: a placement usually takes one of the
        first jobs, and must not decode a queue of thousands to find it."""
        offset = 0
        while True:
            rows = self._query(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? "
                "ORDER BY priority DESC, created_at ASC, rowid ASC LIMIT ? OFFSET ?",
                (job_pb2.QUEUED, page, offset),
            )
            yield from (_job_from_row(r) for r in rows)
            if len(rows) < page:
                return
            offset += page

    def queued_brief(self) -> list[tuple[str, str, bytes, float]]:
        """(id, reason, serialized spec, not_before) of the QUEUED jobs in placement order:
        what explaining waits needs, for a fraction of the cost of decoding whole jobs."""
        rows = self._query(
            "SELECT id, reason, spec, not_before FROM jobs WHERE state = ? "
            "ORDER BY priority DESC, created_at ASC, rowid ASC",
            (job_pb2.QUEUED,),
        )
        return [(i, r, b, t or 0.0) for i, r, b, t in rows]

    def next_not_before(self, now: float) -> float | None:
        """The earliest not_before after `now` of a QUEUED job (a retry backing off)."""
        ((end,),) = self._query(
            "SELECT MIN(not_before) FROM jobs WHERE state = ? AND not_before > ?",
            (job_pb2.QUEUED, now),
        )
        return end

    def set_reasons(self, reasons: dict[str, str], *, now: float | None = None) -> None:
        """Sets the reasons of jobs that are still QUEUED, in one transaction (one commit, not
        one per job)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.executemany(
                "UPDATE jobs SET reason = ?, updated_at = ? WHERE id = ? AND state = ?",
                [(reason, now, job_id, job_pb2.QUEUED) for job_id, reason in reasons.items()],
            )

    def active_jobs(self, worker_id: str | None = None) -> list[job_pb2.Job]:
        """ASSIGNED and RUNNING jobs, of one worker or of all."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN (?, ?)"
        args: list = list(ACTIVE_STATES)
        if worker_id is not None:
            sql += " AND worker_id = ?"
            args.append(worker_id)
        return [_job_from_row(r) for r in self._query(sql + " ORDER BY rowid", args)]

    def dependents(self, source_job: str, state: int = job_pb2.QUEUED) -> list[job_pb2.Job]:
        rows = self._query(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE source_job = ? AND state = ? ORDER BY rowid",
            (source_job, state),
        )
        return [_job_from_row(r) for r in rows]

    def events_after(self, job_id: str, after_seq: int, limit: int = 500) -> list[job_pb2.Event]:
        rows = self._query(
            "SELECT blob FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (job_id, after_seq, limit),
        )
        return [job_pb2.Event.FromString(blob) for (blob,) in rows]

    # ---- workers ----------------------------------------------------------------------

    def upsert_worker(self, worker: WorkerRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO workers (id, hostname, resources, state, last_heartbeat, address) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "hostname = excluded.hostname, resources = excluded.resources, "
                "state = excluded.state, last_heartbeat = excluded.last_heartbeat, "
                "address = excluded.address",
                (
                    worker.id,
                    worker.hostname,
                    worker.resources.SerializeToString(),
                    worker.state,
                    worker.last_heartbeat,
                    worker.address,
                ),
            )

    def get_worker(self, worker_id: str) -> WorkerRecord | None:
        rows = self._query(
            "SELECT id, hostname, resources, state, last_heartbeat, address FROM workers "
            "WHERE id = ?",
            (worker_id,),
        )
        return _worker_from_row(rows[0]) if rows else None

    def list_workers(self) -> list[WorkerRecord]:
        rows = self._query(
            "SELECT id, hostname, resources, state, last_heartbeat, address FROM workers "
            "ORDER BY id"
        )
        return [_worker_from_row(r) for r in rows]

    def set_worker_state(self, worker_id: str, state: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE workers SET state = ? WHERE id = ?", (state, worker_id))

    def touch_worker(self, worker_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("UPDATE workers SET last_heartbeat = ? WHERE id = ?", (now, worker_id))

    def renew_leases(self, state: int, now: float | None = None) -> None:
        """Treats every worker in `state` as having just sent a heartbeat."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("UPDATE workers SET last_heartbeat = ? WHERE state = ?", (now, state))

    # ---- inside a transaction ----------------------------------------------------------

    @staticmethod
    def _get_job(db: sqlite3.Connection, job_id: str) -> job_pb2.Job | None:
        row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_from_row(row) if row else None

    @staticmethod
    def _update(
        db: sqlite3.Connection, job_id: str, now: float, fields: dict, state: int | None = None
    ) -> None:
        unknown = set(fields) - set(_FIELD_ENCODERS)
        if unknown:
            raise ValueError(f"cannot update job fields {sorted(unknown)}")
        values = {name: _FIELD_ENCODERS[name](value) for name, value in fields.items()}
        if state is not None:
            values["state"] = state
        values["updated_at"] = now
        assignments = ", ".join(f"{name} = ?" for name in values)
        cursor = db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?", [*values.values(), job_id]
        )
        if cursor.rowcount != 1:
            raise KeyError(f"job {job_id} not found")

    def _append_state_change(
        self, db: sqlite3.Connection, job_id: str, attempt: int, state: int, reason: str, now: float
    ) -> job_pb2.Event:
        event = job_pb2.Event(state_change=job_pb2.StateChange(state=state, reason=reason))
        _set_time(event.time, now)
        return self._append(db, job_id, attempt, event, now)

    @staticmethod
    def _append(
        db: sqlite3.Connection, job_id: str, attempt: int, event: job_pb2.Event, now: float
    ) -> job_pb2.Event:
        return JobStore._append_many(db, job_id, attempt, [event], now)[0]

    @staticmethod
    def _append_many(
        db: sqlite3.Connection,
        job_id: str,
        attempt: int,
        events: Iterable[job_pb2.Event],
        now: float,
    ) -> list[job_pb2.Event]:
        """Stores events with the next seqs: the job row is read and written once for all
        of them, and the rows go in with one executemany (a batch of 100 metrics events
        costs about what one event did)."""
        (last_seq,) = db.execute("SELECT last_seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
        stored_events, rows = [], []
        for event in events:
            last_seq += 1
            stored = job_pb2.Event()
            stored.CopyFrom(event)
            stored.job_id = job_id
            stored.seq = last_seq
            stored.attempt = attempt
            if not stored.HasField("time"):
                _set_time(stored.time, now)
            stored_events.append(stored)
            rows.append(
                (
                    job_id,
                    stored.seq,
                    attempt,
                    stored.time.ToNanoseconds() / 1e9,
                    stored.SerializeToString(),
                )
            )
        if rows:
            db.executemany(
                "INSERT INTO events (job_id, seq, attempt, time, blob) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            db.execute("UPDATE jobs SET last_seq = ? WHERE id = ?", (last_seq, job_id))
        return stored_events

"""The SQLite database under the JobStore: schema, migrations, the one connection, and
transactions (`atomic`, and `_tx` for the table modules).

One connection, guarded by a lock: the coordinator's write rate is low (batched event
reports, heartbeats), and a single connection keeps transactions trivially serialised.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tunefleet.coordinator.store.rows import load_jobs
from tunefleet.v1 import job_pb2

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

-- Multi-node jobs: the workers of a job's latest placement, one row per machine rank
-- (replaced by the next placement). jobs.worker_id is rank 0's.
CREATE TABLE IF NOT EXISTS job_members (
    job_id     TEXT NOT NULL,
    rank       INTEGER NOT NULL,
    worker_id  TEXT NOT NULL,
    address    TEXT NOT NULL DEFAULT '',
    state      INTEGER NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, rank)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_members_by_worker ON job_members (worker_id, state);

CREATE TABLE IF NOT EXISTS workers (
    id             TEXT PRIMARY KEY,
    hostname       TEXT NOT NULL DEFAULT '',
    resources      BLOB NOT NULL,
    state          INTEGER NOT NULL,
    last_heartbeat REAL NOT NULL,
    address        TEXT NOT NULL DEFAULT ''
);
"""

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
    # user already saw are not stored again (see EventTable.append_report).
    "metric_steps": "TEXT NOT NULL DEFAULT '{}'",
    # Multi-node jobs: HOST:PORT of the latest placement's rendezvous (Job.rendezvous).
    "rendezvous": "TEXT NOT NULL DEFAULT ''",
}


# Sweeps (store/sweeps.py): a sweep and its trials' sampler records.
_SWEEP_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id              TEXT PRIMARY KEY,
    spec            BLOB NOT NULL,
    state           INTEGER NOT NULL,
    reason          TEXT NOT NULL DEFAULT '',
    submitter       TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT UNIQUE,
    grid_size       INTEGER NOT NULL DEFAULT 0,
    best_trial      INTEGER,
    best_value      REAL,
    created_at      REAL NOT NULL,
    finished_at     REAL
);
CREATE TABLE IF NOT EXISTS sweep_trials (
    sweep_id       TEXT NOT NULL,
    number         INTEGER NOT NULL,
    job_id         TEXT NOT NULL DEFAULT '',
    -- optuna's TrialState name: RUNNING | COMPLETE | PRUNED | FAIL
    state          TEXT NOT NULL,
    params         TEXT NOT NULL,
    sampler_params TEXT NOT NULL,
    distributions  TEXT NOT NULL,
    system_attrs   TEXT NOT NULL DEFAULT '{}',
    intermediate   TEXT NOT NULL DEFAULT '{}',
    value          REAL,
    note           TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (sweep_id, number)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sweep_trials_by_job ON sweep_trials (job_id);
"""


def _open_problem(path: Path, error: sqlite3.DatabaseError) -> str:
    """Why `path` cannot be the coordinator's database, for the person who named it: sqlite
    says "file is not a database" or "unable to open database file", which reached users as
    an internal error of ftctl, naming no file."""
    if not isinstance(error, sqlite3.OperationalError):  # it read the file: not SQLite
        why = "it is not an SQLite database (another kind of file?); give a new file's path"
    else:
        why = f"{error} (can this user create and write files in {path.parent}?)"
    return f"cannot open the coordinator database {path}: {why}"


class Database:
    """The connection and its transactions; the table classes (jobs, events, workers,
    stats) build their queries on it, and JobStore is all of them on one connection."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # 1 while a transaction of ours is open (nested _tx are savepoints). Counted, not read
        # from the connection: after a failed COMMIT, sqlite may leave a transaction open, and
        # later writes must then fail loudly at BEGIN, not nest in it and never be committed.
        self._depth = 0
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see _tx).
        try:
            self._conn = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0
            )
            self._conn.execute("PRAGMA journal_mode=WAL")  # the first read of the file
        except sqlite3.DatabaseError as e:
            raise RuntimeError(_open_problem(self.path, e)) from None
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
        self._conn.executescript(_SCHEMA + _SWEEP_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        for name, declaration in _ADDED_JOB_COLUMNS.items():
            if name not in columns:
                self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
        # After the columns it indexes exist. Each submitter's queue in placement order, and
        # how many of its jobs are placed: what placement's fair order reads (JobTable).
        self._conn.execute(
            "CREATE INDEX IF NOT EXISTS jobs_by_submitter "
            "ON jobs (state, submitter, priority DESC, created_at)"
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Several of this store's calls as one: all stored, or (on an exception) none.

        Nested, it is a savepoint of the enclosing one: atomic on its own, durable only with
        the outermost commit. That is group commit: the scheduler stores many workers' event
        reports in one transaction (one fsync), each in a nested atomic()."""
        with self._tx():
            yield

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._depth:  # inside atomic(): a savepoint of it
                self._conn.execute("SAVEPOINT tx")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK TO tx")
                    self._conn.execute("RELEASE tx")
                    raise
                self._conn.execute("RELEASE tx")
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
            self._conn.execute("COMMIT")

    def _write(self, sql: str, args: Iterable = ()) -> None:
        """One statement as one of _tx's transactions. Nested in atomic() it needs no
        savepoint of its own: SQLite undoes a failed statement by itself and leaves the
        enclosing transaction as it was, which is all a savepoint around it would do."""
        with self._lock:
            if self._depth:
                self._conn.execute(sql, tuple(args))
                return
            with self._tx() as db:
                db.execute(sql, tuple(args))

    def _query(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def _jobs(self, sql: str, args: Iterable = ()) -> list[job_pb2.Job]:
        """Jobs selected by `sql` (which selects JOB_COLUMNS), with their members."""
        with self._lock:
            return load_jobs(self._conn, self._conn.execute(sql, tuple(args)).fetchall())

    @contextmanager
    def _read_only(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own that can only read: a long scan on it (metrics) neither
        holds this store's lock nor blocks writers (WAL)."""
        uri = f"{self.path.resolve().as_uri()}?mode=ro"  # as_uri escapes spaces, '#'...
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            yield conn
        finally:
            conn.close()

"""The jobs and job_members tables: a job's row, its state changes, its gang's members, and
the queries placement and listings make."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator

from tunefleet.coordinator.store import rows
from tunefleet.coordinator.store.database import Database
from tunefleet.coordinator.store.rows import JOB_COLUMNS, MEMBER_COLUMNS
from tunefleet.states import ACTIVE_STATES
from tunefleet.v1 import job_pb2, spec_pb2

# A queue's order: higher priority first, then the oldest. Placement interleaves the
# submitters' queues (placement.fair_order).
_QUEUE_ORDER = "ORDER BY priority DESC, created_at ASC, rowid ASC"


class JobTable(Database):
    """Jobs: every method is one transaction, and every state change appends its
    state_change event in it."""

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
                "idempotency_key, source_job, submitter, last_seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
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
            )  # with last_seq 1: its first event's, inserted here
            (event,) = rows.insert_events(
                db, job_id, 0, [rows.state_change(job_pb2.QUEUED, reason, now)], now, 0
            )
            return rows.get_job(db, job_id), event

    def transition(
        self,
        job_id: str,
        state: int,
        reason: str,
        *,
        now: float | None = None,
        notes: Iterable[job_pb2.Event] = (),
        members: Iterable[job_pb2.JobMember] | None = None,
        end_members: tuple[int, str] | None = None,
        **fields,
    ) -> tuple[job_pb2.Job, job_pb2.Event]:
        """Moves a job to `state` and appends the matching state_change event, atomically.
        `notes` (log events explaining the change) are stored just before it, with the
        attempt they are about. `members` replaces a multi-node job's members (a new
        placement); `end_members` = (state, reason) is set on those still ASSIGNED or
        RUNNING (the gang stopped without them)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            # The job's row is read once and written once: its attempt (the notes are about
            # the current one, the state change about the one `fields` sets) and its last
            # event seq, which the UPDATE sets past the events inserted here.
            attempt, last_seq = db.execute(
                "SELECT attempt, last_seq FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            stored = rows.insert_events(db, job_id, attempt, notes, now, last_seq)
            if "attempt" in fields:
                attempt = rows.FIELD_ENCODERS["attempt"](fields["attempt"])
            change = rows.state_change(state, reason, now)
            (event,) = rows.insert_events(
                db, job_id, attempt, [change], now, stored[-1].seq if stored else last_seq
            )
            _update(db, job_id, now, dict(fields, reason=reason), state=state, seq=event.seq)
            if members is not None:
                db.execute("DELETE FROM job_members WHERE job_id = ?", (job_id,))
                db.executemany(
                    f"INSERT INTO job_members ({MEMBER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (job_id, m.rank, m.worker_id, m.address, m.state, m.reason, now)
                        for m in members
                    ],
                )
            if end_members is not None:
                db.execute(
                    "UPDATE job_members SET state = ?, reason = ?, updated_at = ? "
                    "WHERE job_id = ? AND state IN (?, ?)",
                    (*end_members, now, job_id, *ACTIVE_STATES),
                )
            return rows.get_job(db, job_id), event

    def set_member(
        self, job_id: str, rank: int, state: int, reason: str = "", *, now: float | None = None
    ) -> None:
        """Records how one member of a multi-node job is doing (see JobMember.state)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "UPDATE job_members SET state = ?, reason = ?, updated_at = ? "
                "WHERE job_id = ? AND rank = ?",
                (state, reason, now, job_id, rank),
            )

    def update_job(self, job_id: str, *, now: float | None = None, **fields) -> job_pb2.Job:
        """Changes fields without a state change (a waiting reason, cancel_requested...)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            _update(db, job_id, now, fields)
            return rows.get_job(db, job_id)

    def set_reasons(self, reasons: dict[str, str], *, now: float | None = None) -> None:
        """Sets the reasons of jobs that are still QUEUED, in one transaction (one commit, not
        one per job)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.executemany(
                "UPDATE jobs SET reason = ?, updated_at = ? WHERE id = ? AND state = ?",
                [(reason, now, job_id, job_pb2.QUEUED) for job_id, reason in reasons.items()],
            )

    # ---- reads -------------------------------------------------------------------------

    def get_job(self, job_id: str) -> job_pb2.Job | None:
        with self._lock:
            return rows.get_job(self._conn, job_id)

    def has_job(self, job_id: str) -> bool:
        """Whether the id is taken (a new id's check: nothing decoded)."""
        return bool(self._query("SELECT 1 FROM jobs WHERE id = ?", (job_id,)))

    def find_by_idempotency_key(self, key: str) -> job_pb2.Job | None:
        jobs = self._jobs(f"SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?", (key,))
        return jobs[0] if jobs else None

    def list_jobs(
        self,
        states: Iterable[int] = (),
        limit: int = 0,
        *,
        submitter: str | None = None,
        offset: int = 0,
    ) -> list[job_pb2.Job]:
        """Newest first; all states when `states` is empty; all jobs when limit <= 0; only
        `submitter`'s jobs when given; the first `offset` of them skipped."""
        states = list(states)
        conditions = [f"state IN ({','.join('?' * len(states))})"] if states else []
        args: list = list(states)
        if submitter is not None:
            conditions.append("submitter = ?")
            args.append(submitter)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        return self._jobs(
            f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY created_at DESC, rowid DESC "
            "LIMIT ? OFFSET ?",
            [*args, limit if limit > 0 else -1, max(offset, 0)],
        )

    def queued_jobs(self) -> list[job_pb2.Job]:
        """QUEUED jobs, higher priority first, then the oldest (all submitters together)."""
        return self._jobs(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = ? {_QUEUE_ORDER}", (job_pb2.QUEUED,)
        )

    def iter_queued(
        self,
        page: int = 16,
        *,
        submitter: str | None = None,
        head: job_pb2.Job | None = None,
    ) -> Iterator[job_pb2.Job]:
        """queued_jobs() (only `submitter`'s when given), decoded a page at a time: a
        placement usually takes one of the first jobs, and must not decode a queue of
        thousands to find it. `head`: that queue's first job, already read (queued_heads),
        yielded first; the reads start after it, and only if the caller goes on."""
        where, args = "state = ?", [job_pb2.QUEUED]
        if submitter is not None:
            where, args = "state = ? AND submitter = ?", [job_pb2.QUEUED, submitter]
        offset, size = 0, page
        if head is not None:
            yield head
            offset = 1
        while True:
            jobs = self._jobs(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} {_QUEUE_ORDER} LIMIT ? OFFSET ?",
                (*args, size, offset),
            )
            yield from jobs
            if len(jobs) < size:
                return
            offset, size = offset + size, page

    def queued_heads(self) -> list[job_pb2.Job]:
        """The first QUEUED job (queue order) of each submitter that has one, by submitter
        name, in one query: a skip scan of the index finds the submitters (one seek each,
        not a DISTINCT that reads every queued job's entry), and one more seek each their
        heads, where placement's fair order starts."""
        return self._jobs(
            "WITH RECURSIVE s(name) AS ("
            "SELECT (SELECT min(submitter) FROM jobs WHERE state = ?1) UNION ALL "
            "SELECT (SELECT min(submitter) FROM jobs WHERE state = ?1 AND submitter > name) "
            f"FROM s WHERE name IS NOT NULL) SELECT {JOB_COLUMNS} FROM s JOIN jobs "
            "ON jobs.rowid = (SELECT q.rowid FROM jobs AS q WHERE q.state = ?1 "
            "AND q.submitter = s.name ORDER BY q.priority DESC, q.created_at ASC, q.rowid ASC "
            "LIMIT 1) ORDER BY s.name",
            (job_pb2.QUEUED,),
        )

    def placed_counts(self, submitters: Iterable[str]) -> dict[str, int]:
        """How many ASSIGNED or RUNNING jobs each of `submitters` has (one query: an index
        range per state and submitter)."""
        names = list(submitters)
        counts = dict.fromkeys(names, 0)
        if names:
            found = self._query(
                "SELECT submitter, count(*) FROM jobs WHERE state IN (?, ?) "
                f"AND submitter IN ({','.join('?' * len(names))}) GROUP BY submitter",
                (*ACTIVE_STATES, *names),
            )
            counts.update(found)
        return counts

    def queued_brief(self) -> list[tuple[str, str, bytes, float]]:
        """(id, reason, serialized spec, not_before) of the QUEUED jobs in queue order:
        what explaining waits needs, for a fraction of the cost of decoding whole jobs."""
        found = self._query(
            f"SELECT id, reason, spec, not_before FROM jobs WHERE state = ? {_QUEUE_ORDER}",
            (job_pb2.QUEUED,),
        )
        return [(i, r, b, t or 0.0) for i, r, b, t in found]

    def next_not_before(self, now: float) -> float | None:
        """The earliest not_before after `now` of a QUEUED job (a retry backing off)."""
        ((end,),) = self._query(
            "SELECT MIN(not_before) FROM jobs WHERE state = ? AND not_before > ?",
            (job_pb2.QUEUED, now),
        )
        return end

    def active_jobs(self, worker_id: str | None = None) -> list[job_pb2.Job]:
        """ASSIGNED and RUNNING jobs, of one worker or of all. A worker's are those it runs
        alone or as rank 0, and the multi-node jobs whose part it still runs (a member
        ASSIGNED or RUNNING)."""
        if worker_id is None:
            sql, args = f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN (?, ?)", ACTIVE_STATES
        else:
            # Looked up by worker in both tables' indexes (`+state` keeps SQLite from scanning
            # every active job instead): placements and heartbeats call this for one worker.
            sql = (
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE +state IN (?, ?) AND id IN ("
                "SELECT id FROM jobs WHERE worker_id = ? AND state IN (?, ?) UNION ALL "
                "SELECT job_id FROM job_members WHERE worker_id = ? AND state IN (?, ?))"
            )
            args = (*ACTIVE_STATES, worker_id, *ACTIVE_STATES, worker_id, *ACTIVE_STATES)
        return self._jobs(sql + " ORDER BY rowid", args)

    def dependents(self, source_job: str, state: int = job_pb2.QUEUED) -> list[job_pb2.Job]:
        return self._jobs(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE source_job = ? AND state = ? ORDER BY rowid",
            (source_job, state),
        )


def _update(
    db: sqlite3.Connection,
    job_id: str,
    now: float,
    fields: dict,
    state: int | None = None,
    seq: int | None = None,
) -> None:
    """Sets `fields` (FIELD_ENCODERS), and `state` and last_seq (`seq`) when given."""
    unknown = set(fields) - set(rows.FIELD_ENCODERS)
    if unknown:
        raise ValueError(f"cannot update job fields {sorted(unknown)}")
    values = {name: rows.FIELD_ENCODERS[name](value) for name, value in fields.items()}
    if state is not None:
        values["state"] = state
    if seq is not None:
        values["last_seq"] = seq
    values["updated_at"] = now
    assignments = ", ".join(f"{name} = ?" for name in values)
    cursor = db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*values.values(), job_id])
    if cursor.rowcount != 1:
        raise KeyError(f"job {job_id} not found")

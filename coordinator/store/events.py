"""The events table: each job's event log, numbered by `seq` without gaps.

The log's own invariants are kept here, in the transaction that stores the events, because
a crash must not separate them from the events: seqs without gaps, a worker's batch stored
once (`batch_seq`), and a metrics step stored once per phase (a resumed attempt replays
the steps after its checkpoint). Whether a worker may report at all is the Scheduler's
question, asked before it calls in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from tunefleet.coordinator.store import rows
from tunefleet.coordinator.store.database import Database
from tunefleet.progress_phases import is_progress
from tunefleet.v1 import job_pb2


class EventTable(Database):
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
            stored = rows.append_events(db, job_id, attempt, events, now)
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
        ever dropped. Progress reports (phase ``progress/...``, a follower's bar) are not
        measurements: every one is stored, and they leave the high-water marks alone.
        Deduplication and the step high-water mark change in the same
        transaction as the events, so a crash cannot separate them.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            # One read and one write of the job row for the whole batch: each statement is a
            # point where the committing thread gives up the GIL (see rows._insert_event_rows).
            last_batch, marks, last_seq = db.execute(
                "SELECT report_batch, metric_steps, last_seq FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if 0 < batch_seq <= last_batch:
                return [], True
            steps: dict[str, int] = json.loads(marks)
            kept = []
            for event in events:
                if event.WhichOneof("kind") == "metrics" and not is_progress(event.metrics.phase):
                    phase, step = event.metrics.phase, event.metrics.step
                    if phase in steps and step <= steps[phase]:
                        continue
                    steps[phase] = step
                kept.append(event)
            stored = rows.insert_events(db, job_id, attempt, kept, now, last_seq)
            db.execute(
                "UPDATE jobs SET report_batch = ?, metric_steps = ?, last_seq = ?, updated_at = ? "
                "WHERE id = ?",
                (
                    max(batch_seq, last_batch),
                    json.dumps(steps, sort_keys=True),
                    stored[-1].seq if stored else last_seq,
                    now,
                    job_id,
                ),
            )
            return stored, False

    def events_after(self, job_id: str, after_seq: int, limit: int = 500) -> list[job_pb2.Event]:
        found = self._query(
            "SELECT blob FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (job_id, after_seq, limit),
        )
        return [job_pb2.Event.FromString(blob) for (blob,) in found]

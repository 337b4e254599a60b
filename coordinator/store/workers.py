"""The workers table: who registered, with what, and when each was last heard from."""

from __future__ import annotations

import time

from tunefleet.coordinator.store.database import Database
from tunefleet.coordinator.store.rows import WORKER_COLUMNS, WorkerRecord, worker_from_row


class WorkerTable(Database):
    def upsert_worker(self, worker: WorkerRecord) -> None:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO workers ({WORKER_COLUMNS}) "
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
        found = self._query(f"SELECT {WORKER_COLUMNS} FROM workers WHERE id = ?", (worker_id,))
        return worker_from_row(found[0]) if found else None

    def list_workers(self) -> list[WorkerRecord]:
        found = self._query(f"SELECT {WORKER_COLUMNS} FROM workers ORDER BY id")
        return [worker_from_row(r) for r in found]

    def set_worker_state(self, worker_id: str, state: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE workers SET state = ? WHERE id = ?", (state, worker_id))

    def delete_worker(self, worker_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def touch_worker(self, worker_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("UPDATE workers SET last_heartbeat = ? WHERE id = ?", (now, worker_id))

    def renew_leases(self, state: int, now: float | None = None) -> None:
        """Treats every worker in `state` as having just sent a heartbeat."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute("UPDATE workers SET last_heartbeat = ? WHERE state = ?", (now, state))

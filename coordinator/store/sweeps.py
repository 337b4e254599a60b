"""The sweeps and sweep_trials tables: a sweep's base spec and state, and each trial's
sampler record (params, distributions, intermediate and final values).

These rows are the sweep's whole memory: the optuna study the coordinator asks and tells is
rebuilt from them after a restart (coordinator/sweeps.py), so there is no second store to
drift from this one. A trial's row and its job's row are written in one transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tunefleet.coordinator.store.database import Database
from tunefleet.v1 import job_pb2, spec_pb2, sweep_pb2

_SWEEP_COLUMNS = (
    "id, spec, state, reason, submitter, grid_size, best_trial, best_value, created_at, finished_at"
)
_TRIAL_COLUMNS = (
    "sweep_id, number, job_id, state, params, sampler_params, distributions, system_attrs, "
    "intermediate, value, note"
)
_ACTIVE_JOB_STATES = (job_pb2.QUEUED, job_pb2.ASSIGNED, job_pb2.RUNNING)


@dataclass
class SweepRow:
    id: str
    spec: spec_pb2.JobSpec
    state: int
    reason: str
    submitter: str
    grid_size: int
    best_trial: int | None
    best_value: float | None
    created_at: float
    finished_at: float | None


@dataclass
class TrialRow:
    sweep_id: str
    number: int
    job_id: str
    state: str
    params: dict  # JobSpec path -> value
    sampler_params: dict  # what optuna drew (its names and values)
    distributions: dict  # name -> optuna's distribution JSON
    system_attrs: dict = field(default_factory=dict)
    intermediate: dict = field(default_factory=dict)  # step -> value
    value: float | None = None
    note: str = ""


def _sweep(row) -> SweepRow:
    spec = spec_pb2.JobSpec.FromString(row[1])
    return SweepRow(row[0], spec, *row[2:])


def _trial(row) -> TrialRow:
    loads = json.loads
    intermediate = {int(k): v for k, v in loads(row[8]).items()}
    return TrialRow(
        row[0], row[1], row[2], row[3], loads(row[4]), loads(row[5]), loads(row[6]),
        loads(row[7]), intermediate, row[9], row[10],
    )  # fmt: skip


class SweepTable(Database):
    """Sweeps and their trials; every method is one transaction."""

    def insert_sweep(
        self,
        sweep_id: str,
        spec: spec_pb2.JobSpec,
        *,
        submitter: str,
        idempotency_key: str,
        grid_size: int,
        now: float,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO sweeps (id, spec, state, submitter, idempotency_key, grid_size, "
                "created_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sweep_id,
                    spec.SerializeToString(),
                    sweep_pb2.SWEEP_RUNNING,
                    submitter,
                    idempotency_key or None,
                    grid_size,
                    now,
                    "submitted",
                ),
            )

    def get_sweep(self, sweep_id: str) -> SweepRow | None:
        rows = self._query(f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE id = ?", (sweep_id,))
        return _sweep(rows[0]) if rows else None

    def find_sweep_by_key(self, key: str) -> SweepRow | None:
        rows = self._query(f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE idempotency_key = ?", (key,))
        return _sweep(rows[0]) if rows else None

    def list_sweeps(self, limit: int, *, submitter: str | None = None) -> list[SweepRow]:
        """Newest first; only `submitter`'s when given."""
        where, args = ("WHERE submitter = ?", [submitter]) if submitter is not None else ("", [])
        rows = self._query(
            f"SELECT {_SWEEP_COLUMNS} FROM sweeps {where} ORDER BY created_at DESC, rowid DESC "
            "LIMIT ?",
            [*args, limit],
        )
        return [_sweep(r) for r in rows]

    def running_sweeps(self) -> list[str]:
        return [
            r[0]
            for r in self._query(
                "SELECT id FROM sweeps WHERE state = ?", (sweep_pb2.SWEEP_RUNNING,)
            )
        ]

    def update_sweep(self, sweep_id: str, **fields) -> None:
        if not fields:
            return
        sets = ", ".join(f"{name} = ?" for name in fields)
        self._write(f"UPDATE sweeps SET {sets} WHERE id = ?", [*fields.values(), sweep_id])

    def insert_trial(self, t: TrialRow) -> None:
        self._write(
            f"INSERT INTO sweep_trials ({_TRIAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                t.sweep_id, t.number, t.job_id, t.state, json.dumps(t.params),
                json.dumps(t.sampler_params), json.dumps(t.distributions),
                json.dumps(t.system_attrs), json.dumps(t.intermediate), t.value, t.note,
            ),
        )  # fmt: skip

    def update_trial(self, sweep_id: str, number: int, **fields) -> None:
        encoded = {
            k: json.dumps(v) if k in ("intermediate", "system_attrs") else v
            for k, v in fields.items()
        }
        sets = ", ".join(f"{name} = ?" for name in encoded)
        self._write(
            f"UPDATE sweep_trials SET {sets} WHERE sweep_id = ? AND number = ?",
            [*encoded.values(), sweep_id, number],
        )

    def trials(self, sweep_id: str) -> list[TrialRow]:
        rows = self._query(
            f"SELECT {_TRIAL_COLUMNS} FROM sweep_trials WHERE sweep_id = ? ORDER BY number",
            (sweep_id,),
        )
        return [_trial(r) for r in rows]

    def trial_count(self, sweep_id: str) -> int:
        """Trials asked so far (what max_trials bounds)."""
        ((n,),) = self._query("SELECT count(*) FROM sweep_trials WHERE sweep_id = ?", (sweep_id,))
        return n

    def trial_of_job(self, job_id: str) -> TrialRow | None:
        if not job_id:
            return None
        rows = self._query(f"SELECT {_TRIAL_COLUMNS} FROM sweep_trials WHERE job_id = ?", (job_id,))
        return _trial(rows[0]) if rows else None

    def active_trial_count(self, sweep_id: str) -> int:
        """Trials whose jobs are queued or placed: what max_concurrent bounds.

        Only RUNNING and PRUNED trials are looked up in the jobs table: a COMPLETE or FAIL
        trial was told its job's end (or its job was refused), and a job that ended never
        runs again. A PRUNED one's job may still be stopping. So a finished trial's count
        reads the sweep's running trials, not all it ever had."""
        marks = ",".join("?" * len(_ACTIVE_JOB_STATES))
        ((n,),) = self._query(
            "SELECT count(*) FROM sweep_trials t JOIN jobs j ON j.id = t.job_id "
            "WHERE t.sweep_id = ? AND t.state IN ('RUNNING', 'PRUNED') "
            f"AND j.state IN ({marks})",
            (sweep_id, *_ACTIVE_JOB_STATES),
        )
        return n

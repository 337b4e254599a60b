"""What a sweep looks like to its callers (GetSweep, ListSweeps, a chained job's source):
read from the trial rows and their jobs, never from the in-memory studies (sweeps.py), so a
view is the same before and after a coordinator restart."""

from __future__ import annotations

from tunefleet.coordinator.store import JobStore, SweepRow, TrialRow
from tunefleet.spec import sweep as space
from tunefleet.v1 import job_pb2, sweep_pb2


def best(store: JobStore, row: SweepRow) -> TrialRow | None:
    """The completed trial with the best value (of equal ones, the lowest number)."""
    done = [t for t in store.trials(row.id) if t.state == "COMPLETE" and t.value is not None]
    if not done:
        return None
    pick = min if row.spec.sweep.mode == "min" else max
    return pick(done, key=lambda t: t.value)


def view(store: JobStore, row: SweepRow) -> sweep_pb2.Sweep:
    """The sweep with its trials (params, state, value, curve) and its best trial's job."""
    out = sweep_pb2.Sweep(
        id=row.id,
        spec=row.spec,
        state=row.state,
        reason=row.reason,
        submitter=row.submitter,
        grid_size=row.grid_size,
    )
    out.created_at.FromNanoseconds(round(row.created_at * 1e9))
    if row.finished_at is not None:
        out.finished_at.FromNanoseconds(round(row.finished_at * 1e9))
    for t in store.trials(row.id):
        job = store.get_job(t.job_id) if t.job_id else None
        trial = out.trials.add(
            number=t.number,
            job_id=t.job_id,
            job_state=job.state if job is not None else job_pb2.JOB_STATE_UNSPECIFIED,
            trial_state=t.state,
            params={k: space.fmt(v) for k, v in t.params.items()},
            intermediate=t.intermediate,
        )
        if t.value is not None:
            trial.value = t.value
    top = best(store, row)
    if top is not None:
        out.best_trial, out.best_job_id, out.best_value = top.number, top.job_id, top.value
        job = store.get_job(top.job_id)
        if job is not None:
            out.best_artifacts.update(job.artifacts)
    return out

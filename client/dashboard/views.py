"""The SDK's types as JSON for the dashboard's pages.

Only what a page shows crosses to the browser: a job's spec as a short summary (not the
whole JobSpec), events as small dicts keyed by kind. Conversions live here, apart from the
routes, so the page code and the tests read one shape.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from tunefleet.client.sweeps import Sweep, Trial
from tunefleet.client.types import Event, Job, Worker


def _time(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt is not None else None


def _num(v: float | None) -> float | None:
    """JSON has no NaN or infinity; a diverged loss reads as missing, not as a parse error."""
    return v if v is not None and math.isfinite(v) else None


def best_metric(job: Job) -> tuple[str, float | None]:
    """The job's selection metric on the validation set (eval.metric, else the first
    `eval_*` figure): the one number the jobs table ranks by."""
    metric = job.spec.eval.metric
    if metric and f"eval_{metric}" in job.summary:
        return metric, _num(job.summary[f"eval_{metric}"])
    for key in sorted(job.summary):
        if key.startswith("eval_") and key != "eval_loss":
            return key[5:], _num(job.summary[key])
    return metric, None


def job_row(job: Job, progress: float | None = None) -> dict[str, Any]:
    """One row of the jobs table. `progress`: training steps done / total, 0..1, when the
    caller knows it (a running job's last train event); ended jobs read as done."""
    metric, value = best_metric(job)
    if job.state.value == "SUCCEEDED":
        progress = 1.0
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state.value,
        "reason": job.reason,
        "strategy": job.spec.finetune.strategy,
        "submitter": job.submitter,
        "worker": job.worker_id,
        "sweep": job.spec.labels.get("sweep", ""),
        "created": _time(job.created_at),
        "progress": progress,
        "metric": metric,
        "best": value,
    }


def job_detail(job: Job) -> dict[str, Any]:
    """The job page's header: the row plus a spec summary, figures and artifacts."""
    spec = job.spec
    summary = {
        "model": f"{spec.model.source}: {spec.model.name or spec.model.job}",
        "data": f"{spec.data.source}: {spec.data.name or spec.data.train}",
        "strategy": spec.finetune.strategy,
        "optimizer": f"{spec.optimizer.name} lr {spec.optimizer.lr:g}"
        if spec.optimizer.name
        else "",
        "schedule": spec.schedule.name,
        "epochs": spec.train.epochs or None,
        "batch size": spec.train.batch_size or None,
        "gpus": spec.resources.gpus,
        "eval metric": spec.eval.metric,
    }
    return {
        **job_row(job),
        "attempt": job.attempt,
        "started": _time(job.started_at),
        "finished": _time(job.finished_at),
        "last_seq": job.last_seq,
        "terminal": job.is_terminal(),
        "cancel_requested": job.cancel_requested,
        "spec": {k: v for k, v in summary.items() if v not in ("", None, ": ")},
        "summary": {k: _num(v) for k, v in sorted(job.summary.items())},
        "artifacts": dict(sorted(job.artifacts.items())),
        "labels": dict(sorted(spec.labels.items())),
    }


def event_dict(event: Event) -> dict[str, Any]:
    """One event as the job page's script reads it (`kind` picks the body's shape)."""
    body: dict[str, Any]
    if event.kind == "metrics":
        m = event.payload
        body = {
            "phase": m.phase,
            "step": m.step,
            "epoch": m.epoch,
            "loss": _num(m.loss),
            "lr": _num(m.lr),
            "samples_per_s": _num(m.samples_per_s),
            "values": {k: _num(v) for k, v in m.values.items()},
            "total_steps": m.total_steps,
        }
    elif event.kind == "state_change":
        body = {"state": event.payload.state.value, "reason": event.payload.reason}
    elif event.kind == "log":
        body = {"level": event.payload.level, "message": event.payload.message}
    else:  # report
        r = event.payload
        body = {"name": r.name, "columns": list(r.columns), "rows": [list(x) for x in r.rows]}
    return {"seq": event.seq, "time": _time(event.time), "kind": event.kind, **body}


def trial_dict(trial: Trial, best: int | None) -> dict[str, Any]:
    return {
        "number": trial.number,
        "job_id": trial.job_id,
        "job_state": trial.job_state.value if trial.job_state else "",
        "trial_state": trial.trial_state,
        "params": trial.params,
        "value": _num(trial.value),
        "best": trial.number == best,
        "curve": [[step, _num(v)] for step, v in trial.intermediate.items()],
    }


def sweep_dict(sweep: Sweep) -> dict[str, Any]:
    return {
        "id": sweep.id,
        "name": sweep.name,
        "state": sweep.state.value,
        "reason": sweep.reason,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "grid_size": sweep.grid_size,
        "best_trial": sweep.best_trial,
        "best_value": _num(sweep.best_value),
        "best_job_id": sweep.best_job_id,
        "created": _time(sweep.created_at),
        "terminal": sweep.is_terminal(),
        "trials": [trial_dict(t, sweep.best_trial) for t in sweep.trials],
    }


def worker_dict(w: Worker) -> dict[str, Any]:
    state = "UNHEALTHY" if w.unhealthy_reason and w.state == "LIVE" else w.state
    return {
        "id": w.id,
        "hostname": w.hostname,
        "state": state,
        "why": w.unhealthy_reason,
        "gpus": w.gpus,
        "free_gpus": w.free_gpus,
        "gpu_name": w.gpu_name,
        "cpus": w.cpus,
        "jobs": list(w.job_ids),
        "heartbeat_age_s": round(w.last_heartbeat_age_s, 1),
    }


def now() -> float:
    return datetime.now(timezone.utc).timestamp()

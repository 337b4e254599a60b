"""`ftctl get`, `run`/`--follow` and the SDK show the validation and the test figures apart:
validation (`eval_*`) chose the exported checkpoint, test (`test_*`) only measured it.

Fails on the code before: one `metrics:` line mixed them, there was no "test" phase, and
`Job` had no `validation_metrics` / `test_metrics`."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

from client_helpers import needs_coordinator
from rich.console import Console

from tunefleet.client import Event, Job, Metrics
from tunefleet.client.cli import main
from tunefleet.client.render import EventRenderer, render_job
from tunefleet.v1 import job_pb2

SUMMARY = {
    "steps": 40.0,
    "best_step": 30.0,
    "eval_accuracy": 0.9,
    "eval_macro_f1": 0.89,
    "eval_loss": 0.31,
    "test_accuracy": 0.85,
    "test_macro_f1": 0.84,
    "test_loss": 0.42,
}


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, force_terminal=False), out


def test_get_prints_validation_and_test_on_their_own_lines():
    c, out = console()
    render_job(c, Job.from_proto(job_pb2.Job(id="job-1", state=job_pb2.SUCCEEDED, summary=SUMMARY)))
    lines = out.getvalue().splitlines()
    assert "selected    step 30 of 40: best validation accuracy" in lines
    assert "validation  accuracy 0.9000  macro_f1 0.8900  loss 0.3100" in lines
    assert "test        accuracy 0.8500  macro_f1 0.8400  loss 0.4200" in lines


def test_sdk_job_splits_the_summary_by_role():
    job = Job.from_proto(job_pb2.Job(id="job-1", state=job_pb2.SUCCEEDED, summary=SUMMARY))
    assert job.validation_metrics == {"accuracy": 0.9, "macro_f1": 0.89, "loss": 0.31}
    assert job.test_metrics == {"accuracy": 0.85, "macro_f1": 0.84, "loss": 0.42}
    only_val = job_pb2.Job(state=job_pb2.SUCCEEDED, summary={"eval_accuracy": 0.5})
    assert Job.from_proto(only_val).test_metrics == {}


def test_the_test_evaluation_prints_like_an_eval_line():
    c, out = console()
    at = datetime(2025, 1, 1, tzinfo=timezone.utc)
    with EventRenderer(c, throttle_s=60) as r:
        r.handle(
            Event("job-1", 1, at, 1, "metrics", Metrics("eval", 40, 1.0, values={"accuracy": 0.9}))
        )
        r.handle(
            Event("job-1", 2, at, 1, "metrics", Metrics("test", 40, 1.0, values={"accuracy": 0.85}))
        )
    assert out.getvalue().splitlines() == [
        "eval  step 40 epoch 1.00 accuracy 0.9",
        "test  step 40 epoch 1.00 accuracy 0.85",
    ]
    assert r.last_eval == {"accuracy": 0.9}  # the bar keeps showing validation


@needs_coordinator
def test_ftctl_get_of_a_finished_job_shows_both(capsys, cluster, scripted_worker, job_yaml):
    addr = cluster.address
    assert main(["submit", str(job_yaml), "-q", "--coordinator", addr]) == 0
    job_id = capsys.readouterr().out.strip()
    acquired, attempt = scripted_worker.acquire()
    assert acquired == job_id
    scripted_worker.finish(job_id, attempt, summary=SUMMARY)

    assert main(["get", job_id, "--coordinator", addr]) == 0
    out = capsys.readouterr().out
    assert "validation  accuracy 0.9000" in out
    assert "test        accuracy 0.8500  macro_f1 0.8400  loss 0.4200" in out
    assert main(["get", job_id, "--json", "--coordinator", addr]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["test_accuracy"] == 0.85

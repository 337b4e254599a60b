"""`ftctl run` trains what the service would: a job of 2 processes runs 2 gloo ranks (as the
worker launches them), not 1 process with half the global batch and twice the steps."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from client_helpers import has_module

from tunefleet.client.cli import main
from tunefleet.client.cli.common import EXIT_FAILED

pytestmark = pytest.mark.skipif(
    not (has_module("tunefleet.worker.engine.trainer") and has_module("torch")),
    reason="needs the training engine (tunefleet[worker])",
)

TRAIN_ROWS, BATCH, PROCESSES = 128, 16, 2


def write_job(tmp_path, tiny_bert, sentiment_data, **resources) -> str:
    train, eval_ = sentiment_data
    job = {
        "name": "two-ranks",
        "model": {"source": "hf", "name": str(tiny_bert)},
        "data": {"source": "csv", "train": str(train), "eval": str(eval_), "max_length": 16},
        "optimizer": {"lr": 5e-3},
        "train": {"epochs": 1, "batch_size": BATCH, "log_every_steps": 2},
        "resources": resources,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def test_a_two_process_job_runs_two_processes_with_the_services_steps(
    capsys, tmp_path, tiny_bert, sentiment_data
):
    path = write_job(tmp_path, tiny_bert, sentiment_data, processes=PROCESSES)
    out_dir = tmp_path / "run"
    assert main(["run", path, "--out", str(out_dir)]) == 0
    out, _ = capsys.readouterr()
    global_batch = BATCH * PROCESSES
    expected_steps = math.ceil(TRAIN_ROWS / global_batch)  # the service's: 4, not 8
    assert f"running {PROCESSES} processes (global batch {global_batch})" in out
    assert "training on 2 CPU processes (gloo)" in out
    assert f"{expected_steps} optimizer steps" in out
    result = json.loads((out_dir / "result.json").read_text())
    assert result["summary"]["steps"] == expected_steps
    assert "SUCCEEDED two-ranks" in out and (out_dir / "model").is_dir()


def test_a_launched_job_with_bad_input_fails_with_the_engines_reason(
    capsys, tmp_path, tiny_bert, sentiment_data
):
    """Input only the engine judges (data.classes against the classes the data has): the
    ranks exit 2 and ftctl reports the engine's one-line reason, not a traceback."""
    path = write_job(tmp_path, tiny_bert, sentiment_data, processes=PROCESSES)
    with open(path) as f:
        job = yaml.safe_load(f)
    job["data"]["classes"] = [0, 7]
    with open(path, "w") as f:
        f.write(yaml.safe_dump(job))
    assert main(["run", path, "--out", str(tmp_path / "run")]) == EXIT_FAILED
    out, _ = capsys.readouterr()
    assert "FAILED" in out and "data.classes: class id(s) [7] out of range" in out
    assert "Traceback" not in out

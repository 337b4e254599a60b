"""Two gloo CPU processes via `accelerate launch` reproduce one process with the same global
batch: the CLI path end to end (spec JSON in, events.jsonl and result.json out)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tunefleet.spec import spec_to_dict
from tunefleet.worker.engine import run_job
from tunefleet.worker.engine.events import read_events
from tunefleet.worker.engine.launch import build_command


def test_two_processes_match_one_process_with_double_batch(
    tmp_path, bert_nodrop_dir, text_csvs, text_spec, events
):
    sections = {"train": {"epochs": 2, "batch_size": 8}, "eval": {"batch_size": 5}}
    one = text_spec(bert_nodrop_dir, text_csvs, **sections)
    run_job(one, tmp_path / "one", events)
    want = events.train_losses()
    want_eval = [
        e.metrics.values["loss"] for e in events.kind("metrics") if e.metrics.phase == "eval"
    ]
    assert len(want) == 6

    two = text_spec(
        bert_nodrop_dir,
        text_csvs,
        train={"epochs": 2, "batch_size": 4},
        eval={"batch_size": 5},
        resources={"processes": 2},
    )
    spec_path, out, events_path = (
        tmp_path / "spec.json",
        tmp_path / "two",
        tmp_path / "two-events.jsonl",
    )
    spec_path.write_text(json.dumps(spec_to_dict(two)))
    cmd = build_command(two, spec_path, out, events_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    got_events = read_events(events_path)
    assert got_events[0].report.name == "freeze_plan"
    assert any("training on 2 CPU processes (gloo)" in e.log.message for e in got_events)
    got = {e.metrics.step: e.metrics.loss for e in got_events if e.metrics.phase == "train"}
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-4), step
    got_eval = [e.metrics.values["loss"] for e in got_events if e.metrics.phase == "eval"]
    assert got_eval == pytest.approx(want_eval, abs=1e-4)
    result = json.loads((out / "result.json").read_text())
    assert result["artifacts"]["model"] == str(out / "model") and result["summary"]["steps"] == 6

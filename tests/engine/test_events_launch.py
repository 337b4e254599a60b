"""Event builders, the JSON-lines sink, and the launch command."""

from __future__ import annotations

import json
import sys

import pytest

from tunefleet.spec import resolve_defaults
from tunefleet.v1 import coordinator_pb2, spec_pb2
from tunefleet.worker.engine.events import (
    JsonlEventSink,
    log_event,
    metrics_event,
    read_events,
    report_event,
)
from tunefleet.worker.engine.launch import build_command


def test_sink_writes_one_flushed_line_per_event_in_the_contract_encoding(tmp_path):
    path = tmp_path / "events.jsonl"
    sink = JsonlEventSink(path)
    sink(log_event("hello", level="warning"))
    sink(
        metrics_event("train", step=3, epoch=0.5, loss=0.25, lr_groups={"head": 0.1}, total_steps=9)
    )
    sink(report_event("freeze_plan", ["block", "params"], [["head", "1,024"]]))
    lines = path.read_text().splitlines()  # readable before close: flushed per line
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["log"] == {"level": "warning", "message": "hello"} and "time" in first
    assert "seq" not in first and "job_id" not in first
    assert json.loads(lines[1])["metrics"]["lr_groups"] == {"head": 0.1}
    sink.close()
    events = read_events(path)
    assert events[1].metrics.step == 3 and events[1].metrics.HasField("loss")
    assert not events[1].metrics.HasField("samples_per_s")
    assert events[2].report.rows[0].cells == ["head", "1,024"] and "head" in events[2].report.text


def spec_with(processes: int) -> spec_pb2.JobSpec:
    return resolve_defaults(spec_pb2.JobSpec(resources=spec_pb2.ResourceSpec(processes=processes)))


def test_single_process_command():
    cmd = build_command(spec_with(1), "s.json", "out", "ev.jsonl")
    assert cmd == [
        sys.executable,
        "-m",
        "tunefleet.worker.engine",
        "--spec",
        "s.json",
        "--out",
        "out",
        "--events",
        "ev.jsonl",
    ]


def test_multi_process_command_uses_accelerate_launch_without_cpu_flag():
    cmd = build_command(spec_with(2), "s.json", "out", "ev.jsonl")
    assert cmd[:5] == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
    ]
    assert cmd[5] == "2" and "--cpu" not in cmd
    for flag, value in [
        ("--num_machines", "1"),
        ("--mixed_precision", "no"),
        ("--dynamo_backend", "no"),
    ]:
        assert cmd[cmd.index(flag) + 1] == value
    assert int(cmd[cmd.index("--main_process_port") + 1]) > 0
    assert (
        cmd[-8:]
        == [
            "-m",
            "tunefleet.worker.engine",
            "--spec",
            "s.json",
            "--out",
            "out",
            "--events",
            "ev.jsonl",
        ][-8:]
    )


def test_multi_node_command_counts_processes_across_machines():
    spec = resolve_defaults(spec_pb2.JobSpec(resources=spec_pb2.ResourceSpec(nodes=2, processes=3)))
    here = coordinator_pb2.Rendezvous(
        machine_rank=1, num_machines=2, main_process_ip="10.0.0.1", main_process_port=29511
    )
    cmd = build_command(spec, "s.json", "out", "ev.jsonl", rendezvous=here)
    assert cmd[2:4] == ["accelerate.commands.launch", "--multi_gpu"] and "--cpu" not in cmd
    for flag, value in [
        ("--num_processes", "6"),  # accelerate's total: 3 per machine
        ("--num_machines", "2"),
        ("--machine_rank", "1"),
        ("--main_process_ip", "10.0.0.1"),
        ("--main_process_port", "29511"),
    ]:
        assert cmd[cmd.index(flag) + 1] == value
    with pytest.raises(ValueError, match="placed by the coordinator"):
        build_command(spec, "s.json", "out", "ev.jsonl")

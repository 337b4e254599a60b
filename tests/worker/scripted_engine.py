"""A tiny real training process for the worker tests: it speaks the engine's file contract
(events.jsonl lines, result.json, exit codes 0 / 2 / other) without torch.

    python scripted_engine.py MODE SPEC.json OUT_DIR EVENTS.jsonl

MODE: succeed | invalid | crash | hang | stubborn | chatty | preemptible
(preemptible: like hang, but on SIGTERM it logs a checkpoint and exits 75, as the engine
does when a worker drains.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from google.protobuf import json_format

from tunefleet.v1 import job_pb2


def emit(events_path: Path, event: job_pb2.Event) -> None:
    event.time.GetCurrentTime()
    line = json_format.MessageToJson(event, indent=None, preserving_proto_field_name=True)
    with events_path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()


def log(events_path: Path, message: str, level: str = "info") -> None:
    emit(events_path, job_pb2.Event(log=job_pb2.LogLine(level=level, message=message)))


def main() -> int:
    mode, spec_path, out_dir, events_path = (
        sys.argv[1],
        Path(sys.argv[2]),
        Path(sys.argv[3]),
        Path(sys.argv[4]),
    )
    spec = json.loads(spec_path.read_text())
    print(f"scripted engine: {mode} for {spec['name']}", flush=True)
    emit(
        events_path,
        job_pb2.Event(report=job_pb2.Report(name="freeze_plan", columns=["block"], text="all")),
    )
    if mode == "succeed":
        emit(
            events_path,
            job_pb2.Event(metrics=job_pb2.Metrics(phase="train", step=1, epoch=0.5, loss=0.7)),
        )
        log(events_path, "best checkpoint saved")
        result = {
            "artifacts": {"model": str(out_dir / "model")},
            "summary": {"accuracy": 0.75, "steps": 2},
        }
        tmp = out_dir / "result.json.tmp"
        tmp.write_text(json.dumps(result))
        os.replace(tmp, out_dir / "result.json")
        return 0
    if mode == "invalid":
        message = "data.train: no such file /data/train.csv"
        log(events_path, message, "error")
        print(message, file=sys.stderr)
        return 2
    if mode == "crash":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("RuntimeError: boom", file=sys.stderr, flush=True)
        return 3
    if mode == "chatty":
        for i in range(120):
            log(events_path, f"line {i}")
        (out_dir / "result.json").write_text(json.dumps({"artifacts": {}, "summary": {}}))
        return 0
    if mode in ("hang", "stubborn", "preemptible"):
        if mode == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if mode == "preemptible":

            def checkpoint_and_exit(signum, frame):
                log(events_path, "SIGTERM: checkpoint saved", "warning")
                sys.exit(75)

            signal.signal(signal.SIGTERM, checkpoint_and_exit)
        # A grandchild in the same process group, like an accelerate rank.
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (out_dir / "grandchild.pid").write_text(str(grandchild.pid))
        log(events_path, "training")
        time.sleep(600)
    return 1


if __name__ == "__main__":
    sys.exit(main())

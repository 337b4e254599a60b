"""`ftctl submit --follow` on a real pseudo-terminal, against a real coordinator, with a
scripted worker reporting what the engine reports: caching progress, train metrics and
training progress, an evaluation, compression progress, then the end.

Fails on the code before: it drew a bar only for train metrics (nothing while caching or
compressing), labelled throughput "43/s", showed "eval acc" and no ETA, and ended with one
line of unsorted summary keys.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from client_helpers import needs_coordinator

from tunefleet.v1 import job_pb2

FTCTL = Path(sys.executable).parent / "ftctl"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

SUMMARY = {
    "steps": 100.0,
    "best_step": 100.0,
    "train_samples_per_s": 20.4,
    "eval_accuracy": 0.9925,
    "eval_loss": 0.08,
    "fp32_accuracy": 0.9925,
    "fp32_loss": 0.08,
    "fp32_size_mb": 91.6,
    "fp32_nonzero_params": 22714753.0,
    "fp32_latency_ms": 15.6,
    "int8_accuracy": 0.985,
    "int8_loss": 0.1,
    "int8_size_mb": 59.3,
    "int8_nonzero_params": 22714753.0,
    "int8_latency_ms": 12.8,
    "int8_speedup": 1.22,
}


def _stamped(**kind) -> job_pb2.Event:
    event = job_pb2.Event(**kind)
    event.time.GetCurrentTime()
    return event


def _progress(stage: str, done: float, total: float) -> job_pb2.Event:
    step = time.time_ns() // 1_000_000  # as the engine: a growing clock (progress.py)
    values = {"done": done, "total": total}
    return _stamped(metrics=job_pb2.Metrics(phase=f"progress/{stage}", step=step, values=values))


def _train(step: int) -> job_pb2.Event:
    return _stamped(
        metrics=job_pb2.Metrics(
            phase="train", step=step, epoch=step / 50, loss=0.5, lr=1e-4,
            samples_per_s=20.4, total_steps=100,
        )
    )  # fmt: skip


def _drive(worker) -> None:
    job_id, attempt = worker.acquire()
    for done in (400, 800, 1200):
        worker.report(job_id, attempt, [_progress("caching", done, 1600)])
        time.sleep(0.3)
    worker.report(job_id, attempt, [_train(1)])
    for step in (10, 20, 30):
        time.sleep(0.3)
        worker.report(job_id, attempt, [_progress("training", step, 100)])
    eval_values = {"accuracy": 0.9925, "macro_f1": 0.99, "loss": 0.08}
    worker.report(
        job_id,
        attempt,
        [
            _train(100),
            _stamped(
                metrics=job_pb2.Metrics(phase="eval", step=100, epoch=2.0, values=eval_values)
            ),
            _progress("compressing", 1.5, 3.0),
        ],
    )
    time.sleep(0.5)
    worker.finish(job_id, attempt, summary=SUMMARY, artifacts={"model": "/runs/x/model"})


def _read_all(fd: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> str:
    chunks, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode("utf-8", "replace")


@needs_coordinator
def test_submit_follow_on_a_terminal(cluster, scripted_worker, job_yaml):
    driver = threading.Thread(target=_drive, args=(scripted_worker,), daemon=True)
    driver.start()
    main, child = pty.openpty()
    env = {**os.environ, "COLUMNS": "180", "LINES": "40", "TERM": "xterm"}
    proc = subprocess.Popen(
        [str(FTCTL), "submit", str(job_yaml), "--follow", "--coordinator", cluster.address],
        stdin=child, stdout=child, stderr=child, env=env, close_fds=True,
    )  # fmt: skip
    os.close(child)
    try:
        raw = _read_all(main, proc)
        code = proc.wait(timeout=30)
    finally:
        os.close(main)
        driver.join(10)
    text = ANSI.sub("", raw).replace("\r", "\n")
    assert code == 0, text
    assert "caching features" in text and "/1,600 examples" in text
    assert re.search(r"training\s+.*30/100 steps", text), text
    assert "20.4 samples/s" in text and "ETA " in text
    assert "val accuracy 0.9925" in text and "eval acc" not in text
    assert re.search(r"compressing\s+.*50%", text), text
    lines = [line.rstrip() for line in text.splitlines()]
    end = next(i for i, line in enumerate(lines) if line.startswith("SUCCEEDED job "))
    tail = [line for line in lines[end:] if line.strip()]
    assert tail[1] == "  selected    step 100 of 100: best validation accuracy"
    assert tail[2] == "  validation  accuracy 0.9925  loss 0.0800"
    assert tail[3] == "  training    100 steps · 20.4 samples/s"
    assert tail[4] == "  model       /runs/x/model"
    assert any(re.match(r"\s+int8\s+59\.3\s+.*0\.9850\s+.*1\.22x", line) for line in tail), tail

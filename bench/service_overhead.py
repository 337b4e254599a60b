"""What the service costs a job: `ftctl run` vs LocalCluster + submit + follow, same job.

The job is examples/minilm-topics.yaml (all-MiniLM-L6-v2 on the committed 1,600/400 topic
headlines) made head_only for --epochs epochs (the frozen-feature cache makes it ~20 s on
2 idle cores), with model.name pointed at the offline copy and compression left out.
Timed, alternating, --repeats times each:

- ftctl run:  `ftctl run JOB` in a fresh process: imports, training, export -- what a user
  waits for without a coordinator. The baseline.
- engine child: the exact command the worker runs (`python -m tunefleet.worker.engine
  --spec ... --out ... --events ...`), alone: the service minus the service.
- service:    a LocalCluster already up (coordinator in this process, worker a child), then
  Client.submit + follow the events until the job ends: coordinator, worker long poll,
  training child (which pays the same imports), event relay, FinishJob.

Also measured: the cluster's start (once), the training child's import time, and where the
service's extra seconds go (submit -> assigned -> first event from the child -> last event
-> SUCCEEDED seen by the client).

    .venv/bin/python bench/service_overhead.py [--repeats 1] [--epochs 2]

Target: service <= 1.05 x ftctl run + 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from hf_baseline import minilm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def write_job(folder: Path, epochs: int) -> Path:
    job = yaml.safe_load((ROOT / "examples" / "minilm-topics.yaml").read_text())
    job["model"]["name"] = str(minilm())
    for split in ("train", "eval"):
        job["data"][split] = str(ROOT / "examples" / job["data"][split])
    job.pop("compression", None)
    job["finetune"] = {"strategy": "head_only"}
    job["train"]["epochs"] = epochs
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def import_seconds() -> float:
    """A fresh interpreter importing what the training child imports before it trains."""
    code = (
        "import time; t = time.perf_counter(); import torch, transformers, accelerate; "
        "from tunefleet.worker.engine import trainer; print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_ftctl(job: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [str(BIN / "ftctl"), "run", str(job), "--out", str(out), "--fresh"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def run_child(job: Path, out: Path) -> float:
    """The worker's training command for this job, run by hand."""
    from tunefleet.spec import load_job_file, spec_to_dict
    from tunefleet.worker.engine.launch import build_command

    out.mkdir(parents=True)
    spec = load_job_file(job)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec_to_dict(spec)))
    command = build_command(spec, spec_path, out, out / "events.jsonl")
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_service(cluster, job: Path, out: Path) -> tuple[float, dict[str, float]]:
    """Seconds from submit to the client seeing the end, and the phases in between."""
    spec = yaml.safe_load(job.read_text())
    spec["output"] = {"dir": str(out)}
    with cluster.client() as client:
        start = time.perf_counter()
        handle = client.submit(spec)
        marks: dict[str, float] = {}
        for event in handle.events():
            now = time.perf_counter() - start
            change = event.state_change
            if change is not None:
                marks.setdefault(change.state.value.lower(), now)
                if change.state.is_terminal():
                    break
            elif event.kind == "report" and "first_event" not in marks:
                marks["first_event"] = now  # the engine's first event: its freeze plan
            if event.kind in ("log", "metrics", "report"):
                marks["last_event"] = now
        wall = time.perf_counter() - start
    if "succeeded" not in marks:
        raise RuntimeError(f"the job did not succeed: {handle.get()}")
    return wall, marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    from tunefleet.client import LocalCluster

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    imports = import_seconds()
    print(f"training child's imports (torch, transformers, accelerate, engine): {imports:.2f} s")
    direct, child, service, phases = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        job = write_job(root, args.epochs)
        start = time.perf_counter()
        with LocalCluster(
            db_path=root / "cluster" / "coordinator.db", worker_log=root / "w.log"
        ) as cluster:
            cluster_start = time.perf_counter() - start
            print(
                f"LocalCluster up (coordinator + worker LIVE) in {cluster_start:.2f} s", flush=True
            )
            for i in range(args.repeats):
                d = run_ftctl(job, root / f"direct-{i}")
                print(f"  ftctl run        {d:6.2f} s", flush=True)
                c = run_child(job, root / f"child-{i}")
                print(f"  engine child     {c:6.2f} s", flush=True)
                child.append(c)
                s, marks = run_service(cluster, job, root / f"service-{i}")
                print(f"  service          {s:6.2f} s  {marks}", flush=True)
                direct.append(d)
                service.append(s)
                phases.append(marks)
    d, c, s = statistics.median(direct), statistics.median(child), statistics.median(service)
    m = phases[-1]
    print(f"\n{'':44} {'seconds':>8}")
    print(f"{'ftctl run (fresh process)':44} {d:8.2f}")
    print(f"{'engine child command, alone':44} {c:8.2f}")
    print(f"{'service: submit -> SUCCEEDED seen':44} {s:8.2f}")
    print(f"{'  submit -> assigned':44} {m.get('assigned', float('nan')):8.2f}")
    print(
        f"{'  assigned -> first event from the child':44} {m['first_event'] - m['assigned']:8.2f}"
    )
    print(f"{'  first -> last event (training)':44} {m['last_event'] - m['first_event']:8.2f}")
    print(f"{'  last event -> SUCCEEDED seen':44} {m['succeeded'] - m['last_event']:8.2f}")
    print(f"{'child imports (in both runs)':44} {imports:8.2f}")
    print(f"{'LocalCluster start (once, not per job)':44} {cluster_start:8.2f}")
    print(f"\nratio service / ftctl run: {s / d:.3f}x; fixed extra: {s - d:+.2f} s")
    print(f"ratio service / engine child: {s / c:.3f}x; fixed extra: {s - c:+.2f} s")
    ok = s <= 1.05 * d + 3.0
    print(
        f"target service <= 1.05 x direct + 3 s = {1.05 * d + 3:.2f} s -> {'met' if ok else 'NOT met'}"
    )


if __name__ == "__main__":
    main()

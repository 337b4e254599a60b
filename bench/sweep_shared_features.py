"""A 12-trial head_only learning-rate sweep vs one trial alone, same cluster, same run.

The trials freeze the same prefix of the same model over the same examples, so the worker's
shared feature cache (worker/engine/shared_features.py) lets the first trial compute the
frozen features and the other eleven load them. What is left per trial is the part no cache
removes: a training process (imports, model load, tokenising), training the head, evaluating,
writing the model folder.

Both with the worker's training processes forked warm by its engine host (the default) and
started fresh (--no-warm-engine), one cluster each (--engine warm|fresh: only one), and for
each where a trial's time goes after the first (placement, process start, engine setup,
training, export: see `breakdown`).

The job is examples/minilm-topics.yaml made head_only (all-MiniLM-L6-v2, the committed
1,600/400 topic headlines; --train-size keeps a subset), --epochs epochs, no compression.
One LocalCluster per mode (coordinator + one local worker, which runs one job at a time):

1. one trial alone: the base job at the middle learning rate, submitted as a job and followed
   to its end; the worker's cache is emptied before and after (nothing left for the sweep);
2. the sweep: the same job with `sweep: {optimizer.lr: [12 values], algorithm: grid}`, from
   submit until the sweep ends.

    .venv/bin/python bench/sweep_shared_features.py [--trials 12] [--epochs 2] [--engine both]

Prints both wall times and their ratio (target <= 2x), how many trials loaded features, and
the per-trial breakdown.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from hf_baseline import minilm

from tunefleet.client import LocalCluster

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def base_job(folder: Path, epochs: int, train_size: int) -> dict:
    job = yaml.safe_load((ROOT / "examples" / "minilm-topics.yaml").read_text())
    job["name"] = "lr-sweep"
    job["model"]["name"] = str(minilm())
    for split in ("train", "eval"):
        job["data"][split] = str(ROOT / "examples" / job["data"][split])
    if train_size:
        with open(job["data"]["train"], newline="") as f:
            rows = list(csv.reader(f))
        subset = folder / "train.csv"
        with open(subset, "w", newline="") as f:
            csv.writer(f).writerows(rows[: train_size + 1])
        job["data"]["train"] = str(subset)
    job.pop("compression", None)
    job["finetune"] = {"strategy": "head_only"}
    job["train"]["epochs"] = epochs
    return job


def lrs(n: int) -> list[float]:
    """n learning rates, log-spaced from 1e-4 to 3e-2."""
    return [float(f"{1e-4 * (300 ** (i / max(n - 1, 1))):.3g}") for i in range(n)]


def run_one(cluster, job: dict) -> tuple[float, str]:
    with cluster.client() as client:
        start = time.perf_counter()
        final = client.submit(job).wait()
        wall = time.perf_counter() - start
    if final.state.value != "SUCCEEDED":
        raise RuntimeError(f"the trial alone ended {final.state.value}: {final.reason}")
    return wall, final.id


def cache_messages(cluster, job_id: str) -> list[str]:
    with cluster.client() as client:
        events = client.job(job_id).events(follow=False)
        return [
            e.log.message for e in events if e.kind == "log" and "feature cache" in e.log.message
        ]


# Where a trial's wall time goes, from its events (each stamped where it happened: the
# coordinator's state changes, the worker's "started", the engine's logs):
#   placed    previous trial SUCCEEDED -> this one ASSIGNED (sweep, placement, worker poll)
#   start     ASSIGNED -> "started on worker" (worker: inputs, out folder, process start)
#   setup     "started" -> "training on" (engine: imports if fresh, model, tokenizer, data,
#             shared feature cache)
#   train     "training on" -> "exporting the model" (steps, evaluations, checkpoints)
#   finish    "exporting" -> SUCCEEDED (model folder, result.json, exit, FinishJob)
PHASES = ("placed", "start", "setup", "train", "finish")


def timeline(cluster, job_id: str) -> dict[str, float]:
    """Seconds (since the epoch) of the events that bound the phases."""
    marks: dict[str, float] = {}
    with cluster.client() as client:
        for e in client.job(job_id).events(follow=False):
            t = e.time.timestamp()
            if e.kind == "state_change":
                marks.setdefault(e.state_change.state.value, t)
            elif e.kind == "log":
                for key, prefix in (
                    ("started", "started on worker"),
                    ("training", "training on"),
                    ("exporting", "exporting the model"),
                ):
                    if e.log.message.startswith(prefix):
                        marks.setdefault(key, t)
    return marks


def breakdown(cluster, trials) -> dict[str, float]:
    """Mean seconds per phase over the trials after the first to run (it computes the
    frozen features; the others load them)."""
    marks = sorted((timeline(cluster, t.job_id) for t in trials), key=lambda m: m["ASSIGNED"])
    ends = ("ASSIGNED", "started", "training", "exporting", "SUCCEEDED")
    sums = dict.fromkeys(PHASES, 0.0)
    for before, m in zip(marks, marks[1:], strict=False):
        starts = (before["SUCCEEDED"], m["ASSIGNED"], m["started"], m["training"], m["exporting"])
        for phase, a, b in zip(PHASES, starts, ends, strict=True):
            sums[phase] += m[b] - a
    return {phase: total / max(len(marks) - 1, 1) for phase, total in sums.items()}


@dataclass
class Run:
    single: float
    sweep: float
    hits: int
    phases: dict[str, float]

    @property
    def ratio(self) -> float:
        return self.sweep / self.single


def measure(args, job: dict, root: Path, *, warm: bool) -> Run:
    """One LocalCluster: one trial alone, then the sweep (see the module docstring)."""
    values = lrs(args.trials)
    flags = () if warm else ("--no-warm-engine",)
    name = "warm" if warm else "fresh"
    print(f"\n== training processes {name} ({'default' if warm else '--no-warm-engine'})")
    with LocalCluster(
        db_path=root / name / "coordinator.db", worker_log=root / f"{name}.log", worker_args=flags
    ) as cluster:
        shared = cluster.artifacts / ".feature-cache"
        shutil.rmtree(shared, ignore_errors=True)
        alone = {**job, "optimizer": {**job["optimizer"], "lr": values[len(values) // 2]}}
        single, single_id = run_one(cluster, alone)
        print(f"one trial alone (lr {alone['optimizer']['lr']}): {single:.1f} s", flush=True)
        for line in cache_messages(cluster, single_id):
            print(f"  {line}")
        shutil.rmtree(shared, ignore_errors=True)  # the sweep starts with an empty cache

        sweep = {
            **job,
            "sweep": {
                "space": {"optimizer.lr": values},
                "algorithm": "grid",
                "max_trials": args.trials,
                "max_concurrent": 2,  # one queued behind the running one: no idle worker
            },
        }
        with cluster.client() as client:
            start = time.perf_counter()
            handle = client.submit_sweep(sweep)
            final = handle.wait(poll_s=0.5)
            wall = time.perf_counter() - start
        print(f"sweep of {args.trials} trials: {wall:.1f} s ({final.state.value})", flush=True)
        hits = 0
        for trial in sorted(final.trials, key=lambda t: t.number):
            messages = cache_messages(cluster, trial.job_id)
            hit = any("features from cache" in m for m in messages)
            hits += hit
            value = "-" if trial.value is None else f"{trial.value:.4f}"
            print(
                f"  trial {trial.number:2d} lr {trial.params.get('optimizer.lr', '?'):>8} "
                f"{trial.trial_state:9} accuracy {value}  "
                f"{'features from cache' if hit else 'computed'}"
            )
        phases = breakdown(cluster, final.trials)
    run = Run(single, wall, hits, phases)
    print(f"trials that loaded the frozen features: {hits} of {args.trials}")
    print(f"sweep / one trial: {wall:.1f} s / {single:.1f} s = {run.ratio:.2f}x (target <= 2x)")
    print(
        f"per trial after the first: {sum(phases.values()):.1f} s = "
        + " + ".join(f"{phase} {phases[phase]:.1f}" for phase in PHASES)
    )
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=0, help="0: all 1,600")
    ap.add_argument(
        "--engine",
        choices=("both", "warm", "fresh"),
        default="both",
        help="training processes forked by the worker's warm engine host, started fresh "
        "(--no-warm-engine), or both, one cluster each (default: both)",
    )
    args = ap.parse_args()

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        job = base_job(root, args.epochs, args.train_size)
        for mode in ("warm", "fresh"):
            if args.engine in (mode, "both"):
                runs[mode] = measure(args, job, root, warm=mode == "warm")
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for mode, run in runs.items():
        print(
            f"{mode:5}: sweep / one trial = {run.sweep:.1f} s / {run.single:.1f} s = "
            f"{run.ratio:.2f}x (target <= 2x); per trial after the first "
            f"{sum(run.phases.values()):.1f} s, setup {run.phases['setup']:.1f} s"
        )
    if len(runs) == 2:
        print(f"warm sweep / fresh sweep: {runs['warm'].sweep / runs['fresh'].sweep:.2f}x")
    sys.exit(0)


if __name__ == "__main__":
    main()

"""A 12-trial head_only learning-rate sweep vs one trial alone, same cluster, same run.

The trials freeze the same prefix of the same model over the same examples, so the worker's
shared feature cache (worker/engine/shared_features.py) lets the first trial compute the
frozen features and the other eleven load them. What is left per trial is the part no cache
removes: a training process (imports, model load, tokenising), training the head, evaluating,
writing the model folder.

The job is examples/minilm-topics.yaml made head_only (all-MiniLM-L6-v2, the committed
1,600/400 topic headlines; --train-size keeps a subset), --epochs epochs, no compression.
One LocalCluster (coordinator + one local worker, which runs one job at a time):

1. one trial alone: the base job at the middle learning rate, submitted as a job and followed
   to its end; the worker's cache is emptied before and after (nothing left for the sweep);
2. the sweep: the same job with `sweep: {optimizer.lr: [12 values], algorithm: grid}`, from
   submit until the sweep ends.

    .venv/bin/python bench/sweep_shared_features.py [--trials 12] [--epochs 2]

Prints both wall times and their ratio (target <= 2x), and how many trials loaded features.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from hf_baseline import minilm

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
        return [e.log.message for e in events if e.kind == "log" and "feature cache" in e.log.message]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=0, help="0: all 1,600")
    args = ap.parse_args()
    from tunefleet.client import LocalCluster

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        job = base_job(root, args.epochs, args.train_size)
        values = lrs(args.trials)
        with LocalCluster(
            db_path=root / "cluster" / "coordinator.db", worker_log=root / "w.log"
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
    print(f"\ntrials that loaded the frozen features: {hits} of {args.trials}")
    ratio = wall / single
    print(f"sweep / one trial: {wall:.1f} s / {single:.1f} s = {ratio:.2f}x (target <= 2x)")
    print(f"per trial in the sweep: {wall / args.trials:.1f} s")
    sys.exit(0)


if __name__ == "__main__":
    main()

"""ASHA vs the full grid: does stopping weak trials early find the grid's best config for
less compute?

The same 12-point learning-rate grid (head_only all-MiniLM-L6-v2 on the topic headlines,
--epochs epochs, validation every --eval-every steps) runs twice on one LocalCluster worker:
once to the end (`pruner: none`) and once with `pruner: asha` (optuna's
SuccessiveHalvingPruner, reduction factor 4, its minimum resource from the first finished
trial). The worker's shared feature cache is emptied before each sweep, so each computes the
frozen features once (bench/sweep_shared_features.py measures that part).

Compute, two ways: optimizer steps trained, summed over the trials (a pruned trial counts
the steps it reached before it was stopped: its last validation step; what a GPU would be
busy with), and the trials' job wall time, summed (which also counts each trial's fixed
cost: process start, imports, model load).

    .venv/bin/python bench/sweep_asha.py [--trials 12] [--epochs 4] [--eval-every 25]

Target: ASHA's best validation accuracy within 0.5 points of the grid's, at <= 40 % of
the grid's compute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from sweep_shared_features import base_job, lrs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_sweep(cluster, job: dict, values: list[float], pruner: str) -> dict:
    shutil.rmtree(cluster.artifacts / ".feature-cache", ignore_errors=True)
    spec = {
        **job,
        "name": f"lr-{pruner}",
        "sweep": {
            "space": {"optimizer.lr": values},
            "algorithm": "grid",
            "max_trials": len(values),
            "max_concurrent": 2,
            "pruner": pruner,
        },
    }
    with cluster.client() as client:
        start = time.perf_counter()
        final = client.submit_sweep(spec).wait(poll_s=0.5)
        wall = time.perf_counter() - start
        steps, job_s, rows = 0, 0.0, []
        for trial in sorted(final.trials, key=lambda t: t.number):
            job_ = client.get(trial.job_id)
            seconds = (
                (job_.finished_at - job_.started_at).total_seconds()
                if job_.started_at and job_.finished_at
                else 0.0
            )
            reached = max(trial.intermediate, default=0)
            if trial.trial_state == "COMPLETE":
                reached = int(job_.summary.get("steps", reached) or reached)
            steps += reached
            job_s += seconds
            rows.append((trial, reached, seconds))
    best = final.best()
    print(f"\n{pruner}: {final.state.value} in {wall:.1f} s")
    for trial, reached, seconds in rows:
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        last = (
            f"{trial.intermediate[max(trial.intermediate)]:.4f}" if trial.intermediate else "-"
        )
        print(
            f"  t{trial.number:<2} lr {trial.params['optimizer.lr']:>8} {trial.trial_state:9} "
            f"steps {reached:4d}  job {seconds:5.1f} s  value {value}  last eval {last}"
        )
    return {
        "wall": wall,
        "steps": steps,
        "job_s": job_s,
        "best_lr": best.params["optimizer.lr"] if best else None,
        "best": final.best_value,
        "pruned": sum(t.trial_state == "PRUNED" for t in final.trials),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--train-size", type=int, default=0, help="0: all 1,600")
    args = ap.parse_args()
    from tunefleet.client import LocalCluster

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        job = base_job(root, args.epochs, args.train_size)
        job["eval"] = {"metric": "accuracy", "every_steps": args.eval_every}
        values = lrs(args.trials)
        with LocalCluster(
            db_path=root / "cluster" / "coordinator.db", worker_log=root / "w.log"
        ) as cluster:
            grid = run_sweep(cluster, job, values, "none")
            asha = run_sweep(cluster, job, values, "asha")
    print(f"\n{'':28} {'grid':>10} {'asha':>10} {'asha/grid':>10}")
    for key, label in (("steps", "optimizer steps, summed"), ("job_s", "trial wall s, summed"),
                       ("wall", "sweep wall s")):  # fmt: skip
        print(f"{label:28} {grid[key]:10.1f} {asha[key]:10.1f} {asha[key] / grid[key]:10.2f}")
    print(f"{'best lr':28} {grid['best_lr']:>10} {asha['best_lr']:>10}")
    print(f"{'best validation accuracy':28} {grid['best']:10.4f} {asha['best']:10.4f}")
    print(f"{'trials pruned':28} {grid['pruned']:10d} {asha['pruned']:10d}")
    gap = (grid["best"] - asha["best"]) * 100
    share = asha["steps"] / grid["steps"]
    met = gap <= 0.5 and share <= 0.4
    print(
        f"\nASHA's best is {gap:+.2f} points below the grid's, at {share:.0%} of its optimizer "
        f"steps ({asha['job_s'] / grid['job_s']:.0%} of its trial time): target (<= 0.5 points, "
        f"<= 40 %) {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()

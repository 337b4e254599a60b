"""ASHA vs the full grid: does stopping weak trials early find the grid's best config for
less compute?

The same 12-point learning-rate grid (head_only all-MiniLM-L6-v2 on the topic headlines,
--epochs epochs, validation every --eval-every steps) runs twice on one LocalCluster worker:
once to the end (`pruner: none`) and then with `pruner: asha` (optuna's
SuccessiveHalvingPruner, reduction factor 4, its first rung at the trials' first validation:
coordinator/samplers.ASHAPruner) once per --seeds value: the sweep's seed sets the order in
which the grid's points are tried, and what ASHA stops depends on it. --workers N adds
workers, so that up to max_concurrent trials train at once. The shared feature cache is
emptied before each sweep, so each computes the frozen features once
(bench/sweep_shared_features.py measures that part).

Then a replay, with no training: the grid's own validation curves (every trial's accuracy
at every validation step) are fed to optuna's pruner in 40 random orders, with 1 to 12
trials training at once, for optuna's default first rung ('auto': a hundredth of the first
finished trial's steps) and for tunefleet's. That shows the spread over orders that one run
cannot, and what a wider fleet does to each.

Compute, two ways: optimizer steps trained, summed over the trials (a pruned trial counts
the steps it reached before it was stopped: its last validation step; what a GPU would be
busy with), and the trials' job wall time, summed (which also counts each trial's fixed
cost: process start, imports, model load).

    .venv/bin/python bench/sweep_asha.py [--trials 12] [--epochs 4] [--eval-every 25]
        [--seeds 0,1,2] [--workers 1] [--max-concurrent 2]

Target: ASHA's best validation accuracy within 0.5 points of the grid's, at <= 40 % of
the grid's compute (judged on the mean over the seeds).
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from sweep_shared_features import base_job, lrs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_sweep(
    cluster, job: dict, values: list[float], pruner: str, seed: int, max_concurrent: int
) -> dict:
    shutil.rmtree(cluster.artifacts / ".feature-cache", ignore_errors=True)
    spec = {
        **job,
        "name": f"lr-{pruner}-{seed}",
        "sweep": {
            "space": {"optimizer.lr": values},
            "algorithm": "grid",
            "max_trials": len(values),
            "max_concurrent": max_concurrent,
            "pruner": pruner,
            "seed": seed,
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
    print(f"\n{pruner}, seed {seed}: {final.state.value} in {wall:.1f} s")
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
        "curves": {t.params["optimizer.lr"]: dict(t.intermediate) for t in final.trials},
    }


def replay(curves: dict, make_pruner, order: list, at_once: int) -> tuple[float, float]:
    """One sweep replayed on the grid's recorded curves: `at_once` trials train in step,
    each reports at its recorded validation steps, a pruned one stops there. Returns the
    share of the grid's steps trained and the best accuracy seen."""
    import optuna

    last = {lr: max(c) for lr, c in curves.items()}
    study = optuna.create_study(direction="maximize", pruner=make_pruner())
    waiting, running, used, best, order_no = list(order), [], 0, 0.0, 0

    def start(now: int) -> None:
        nonlocal order_no
        if waiting:
            lr = waiting.pop(0)
            steps = sorted(curves[lr])
            heapq.heappush(running, (now + steps[0], order_no, study.ask(), lr, 0))
            order_no += 1

    for _ in range(at_once):
        start(0)
    while running:
        now, _, trial, lr, i = heapq.heappop(running)
        steps = sorted(curves[lr])
        step = steps[i]
        trial.report(curves[lr][step], step)
        pruned = trial.should_prune()
        if pruned or step == last[lr]:
            used += step
            best = max(best, *(v for s, v in curves[lr].items() if s <= step))
            study.tell(trial, None if pruned else max(curves[lr].values()),
                       optuna.trial.TrialState.PRUNED if pruned else None)  # fmt: skip
            start(now)
        else:
            heapq.heappush(running, (now + steps[i + 1] - step, order_no, trial, lr, i + 1))
            order_no += 1
    return used / sum(last.values()), best


def print_replay(curves: dict, grid_best: float, orders: int = 40) -> None:
    import optuna

    from tunefleet.coordinator.samplers import ASHAPruner

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pruners = {
        "optuna 'auto'": optuna.pruners.SuccessiveHalvingPruner,
        "tunefleet": ASHAPruner,
    }
    print(f"\nreplay of the grid's curves, {orders} orders: share of the grid's steps "
          "(mean / 90th percentile / max), worst gap to the grid's best")  # fmt: skip
    print(f"{'trials at once':>16} " + "".join(f"{name:>30}" for name in pruners))
    for at_once in (1, 2, 4, 6, 12):
        cells = []
        for make in pruners.values():
            runs = []
            for seed in range(orders):
                order = sorted(curves)
                random.Random(seed).shuffle(order)
                runs.append(replay(curves, make, order, at_once))
            shares = sorted(share for share, _ in runs)
            gap = max((grid_best - best) * 100 for _, best in runs)
            p90 = shares[int(0.9 * (len(shares) - 1))]
            cells.append(f"{statistics.mean(shares):.2f} / {p90:.2f} / {shares[-1]:.2f}, "
                         f"{gap:.2f} pt")  # fmt: skip
        print(f"{at_once:>16} " + "".join(f"{c:>30}" for c in cells))


def extra_worker(cluster, stack: ExitStack, n: int, log: Path) -> None:
    """Another worker process on the same coordinator and artifacts folder: the cluster's
    own worker command, under another id (the last --id wins)."""
    argv = [*cluster.worker_command(), "--id", f"bench-{n}"]
    out = stack.enter_context(log.open("ab"))
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    stack.callback(lambda: (proc.terminate(), proc.wait(30)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--train-size", type=int, default=0, help="0: all 1,600")
    ap.add_argument("--seeds", default="0,1,2", help="one ASHA sweep per seed (grid order)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-concurrent", type=int, default=2)
    args = ap.parse_args()
    from tunefleet.client import LocalCluster

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        job = base_job(root, args.epochs, args.train_size)
        job["eval"] = {"metric": "accuracy", "every_steps": args.eval_every}
        values = lrs(args.trials)
        cluster = stack.enter_context(
            LocalCluster(db_path=root / "cluster" / "coordinator.db", worker_log=root / "w.log")
        )
        for n in range(1, args.workers):
            extra_worker(cluster, stack, n, root / "w.log")
        at_once = args.max_concurrent
        grid = run_sweep(cluster, job, values, "none", seeds[0], at_once)
        ashas = [run_sweep(cluster, job, values, "asha", seed, at_once) for seed in seeds]
    print(f"\n{'':28} {'grid':>10} " + "".join(f"{'asha s' + str(s):>10}" for s in seeds)
          + f" {'mean/grid':>10}")  # fmt: skip
    for key, label in (("steps", "optimizer steps, summed"), ("job_s", "trial wall s, summed"),
                       ("wall", "sweep wall s")):  # fmt: skip
        mean = statistics.mean(a[key] for a in ashas)
        print(f"{label:28} {grid[key]:10.1f} " + "".join(f"{a[key]:10.1f}" for a in ashas)
              + f" {mean / grid[key]:10.2f}")  # fmt: skip
    print(f"{'best lr':28} {grid['best_lr']:>10} " + "".join(f"{a['best_lr']:>10}" for a in ashas))
    print(f"{'best validation accuracy':28} {grid['best']:10.4f} "
          + "".join(f"{a['best']:10.4f}" for a in ashas))  # fmt: skip
    print(f"{'trials pruned':28} {grid['pruned']:10d} " + "".join(f"{a['pruned']:10d}" for a in ashas))
    gap = max((grid["best"] - a["best"]) * 100 for a in ashas)
    shares = [a["steps"] / grid["steps"] for a in ashas]
    share = statistics.mean(shares)
    met = gap <= 0.5 and share <= 0.4
    print(
        f"\nASHA ({args.workers} worker(s), up to {at_once} trials at once): best at most "
        f"{gap:+.2f} points below the grid's, at {share:.0%} of its optimizer steps on average "
        f"({', '.join(f'{x:.0%}' for x in shares)}): target (<= 0.5 points, <= 40 %) "
        f"{'met' if met else 'NOT met'}"
    )
    print_replay(grid["curves"], grid["best"])


if __name__ == "__main__":
    main()

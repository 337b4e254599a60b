"""Sweep scheduling: placements/s, scheduling latency and fairness with 100 sweeps x 100
trials against 1,000 simulated workers, vs the same count of plain jobs in the same run.

The real scheduler core (coordinator/scheduler.py, sweeps.py, placement.py, lifecycle.py,
the store/ package, SQLite on disk), driven in one thread as bench/scheduler.py does:

- sweeps: --sweeps sweeps of --trials trials each (optimizer.lr loguniform(1e-5, 1e-2) x
  finetune.strategy, k when last_k; --algorithm tpe by default, as for any space with a
  range), submitted round-robin by --submitters users through Scheduler.sweeps.submit.
  max_concurrent (--max-concurrent, 20) puts 2,000 trials in flight for 1,000 workers, so
  a backlog is always queued and every finished trial makes the coordinator ask the next
  one (optuna tell and ask, the new job and trial row: one commit with the finished job).
- one more user streams ordinary jobs: one every --other-every placements.
- the simulated workers: each takes a job (AcquireJob: scheduler.acquire) and, on its next
  turn, finishes it SUCCEEDED with eval_accuracy in its summary (FinishJob: the sweep tells
  optuna the value and asks for the next trial), then takes the next job. With --reports
  each also reports an eval metrics event when placed (ReportEvents: RUNNING, and the
  trial's intermediate value); off by default, as in bench/scheduler.py, because one
  worker at a time pays a commit per report that a real fleet's reports share (group
  commit; bench/events.py measures that path).
- plain (the baseline): the same run with each sweep replaced by a submitter that keeps
  max_concurrent plain jobs of the same shape in flight (it submits the next when one
  ends), --trials in all: the same placements, without optuna and trial rows.

Figures: placements/s over the whole run, p50/p99 of the acquire that places a job (the
scheduling latency of the targets) and of finish (it holds the lock while the sweep tells
and asks), and each job's wait from queued to placed, in seconds and in placements made
meanwhile, for the sweeps' trials and for the other user's jobs: those must not starve
behind the sweeps' backlog. Both runs start timing with the same queue: every sweep's first
max_concurrent trials queued (the sampler process draws them after submit; waiting for
them is set-up, as submitting the plain run's first jobs is). Last, the CPU time each
placement took in this process (coordinator and simulated workers) and each ask in the
sampler process, over the timed loop: what 500 placements/s would need in cores.

    .venv/bin/python bench/scheduler_sweeps.py [--sweeps 100] [--trials 100]
        [--workers 1000] [--max-concurrent 20] [--submitters 4] [--other-every 10]
        [--algorithm tpe] [--reports] [--max-seconds 600]

Targets: >= 500 placements/s and p99 scheduling latency < 50 ms with the sweeps; the other
user's jobs do not starve: p99 of their wait <= the trials' median wait, or at most one
round of the submitters (--submitters + 1 placements) when the trials hardly wait.
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from scheduler import make_spec, ms, pct

from tunefleet.coordinator.event_bus import EventBus
from tunefleet.coordinator.scheduler import Scheduler
from tunefleet.coordinator.store import JobStore
from tunefleet.spec import spec_from_dict, spec_to_dict
from tunefleet.v1 import coordinator_pb2, job_pb2, spec_pb2, sweep_pb2

OTHER_USER = "erin"
STRATEGIES = ("head_only", "last_k", "full")
STRATEGY_GAIN = {"head_only": -0.05, "last_k": 0.0, "full": 0.02}


def accuracy(spec: spec_pb2.JobSpec, rng: random.Random) -> float:
    """A made-up response surface (best near lr 3e-4 with full fine-tuning), so that TPE
    has something to learn from."""
    lr = spec.optimizer.lr if spec.optimizer.HasField("lr") else 1e-3
    bonus = STRATEGY_GAIN.get(spec.finetune.strategy, 0.0)
    return 0.9 - 0.05 * (math.log10(lr) + 3.5) ** 2 + bonus + rng.gauss(0.0, 0.01)


def sweep_spec(i: int, trials: int, max_concurrent: int, algorithm: str) -> spec_pb2.JobSpec:
    data = spec_to_dict(make_spec(i))
    data["name"] = f"sweep-{i}"
    data["sweep"] = {
        "space": {
            "optimizer.lr": "loguniform(1e-5, 1e-2)",
            "finetune.strategy": list(STRATEGIES),
            "finetune.k": {"values": [1, 2], "when": {"finetune.strategy": "last_k"}},
        },
        "metric": "accuracy",
        "mode": "max",
        "algorithm": algorithm,
        "max_trials": trials,
        "max_concurrent": max_concurrent,
        "seed": i,
    }
    return spec_from_dict(data)


def plain_spec(name: str, rng: random.Random) -> spec_pb2.JobSpec:
    """A job shaped like a trial (what a sweep's point resolves to), drawn by the bench."""
    spec = make_spec(0)
    spec.name = name
    spec.optimizer.lr = 10 ** rng.uniform(-5, -2)
    spec.finetune.strategy = rng.choice(STRATEGIES)
    if spec.finetune.strategy == "last_k":
        spec.finetune.k = rng.choice((1, 2))
    return spec


@dataclass
class Run:
    """What one run measured."""

    label: str
    setup_s: float = 0.0
    placed: int = 0
    wall: float = 0.0
    acquire: list[float] = field(default_factory=list)
    report: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)
    # Queued -> placed, in seconds and in placements made meanwhile, by whose job it was.
    wait_s: dict[str, list[float]] = field(default_factory=lambda: {"sweeps": [], "other": []})
    wait_n: dict[str, list[int]] = field(default_factory=lambda: {"sweeps": [], "other": []})
    sweeps_ended: str = ""
    timed_out: bool = False
    # CPU seconds over the placement loop: this process's (the coordinator's threads and
    # the simulated workers') and the sampler process's (None: no child, or not Linux).
    cpu_s: float = 0.0
    sampler_cpu_s: float | None = None
    asks: int = 0  # trials drawn during the loop (each one ask)


def process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of another process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def simulate(args, *, with_sweeps: bool, folder: Path) -> Run:
    """One run on a fresh database: the sweeps (or their plain stand-ins) and the other
    user's stream, until every trial has ended or --max-seconds."""
    run = Run("sweeps" if with_sweeps else "plain jobs")
    rng = random.Random(0)
    users = [f"user{u}" for u in range(args.submitters)]
    store = JobStore(folder / f"{run.label.replace(' ', '-')}.db")
    scheduler = Scheduler(
        store,
        EventBus(),
        check_paths=False,
        lease_timeout_s=3600.0,
        sampler_process=not args.in_process_asks,  # as the server runs it, by default
    )
    scheduler.start()  # the lease watch, as in a server
    workers = [
        scheduler.register_worker(
            f"w{i:04d}", hostname="bench", resources=coordinator_pb2.WorkerResources(cpus=2)
        )
        for i in range(args.workers)
    ]
    # Plain stand-ins for the sweeps: chain -> jobs submitted so far; job id -> its chain.
    chain_sent = [0] * args.sweeps
    chain_of: dict[str, int] = {}

    def chain_next(chain: int) -> None:
        spec = plain_spec(f"chain-{chain}-{chain_sent[chain]}", rng)
        job = scheduler.submit(spec, submitter=users[chain % len(users)])
        chain_of[job.id] = chain
        chain_sent[chain] += 1

    start = time.perf_counter()
    sweep_ids = []
    for i in range(args.sweeps):
        if with_sweeps:
            spec = sweep_spec(i, args.trials, args.max_concurrent, args.algorithm)
            sweep_ids.append(scheduler.sweeps.submit(spec, submitter=users[i % len(users)]).id)
        else:
            for _ in range(min(args.max_concurrent, args.trials)):
                chain_next(i)
    # The same start for both runs: every sweep's first max_concurrent trials queued, as
    # the plain run's first jobs are. In-process asks make them in submit; the sampler
    # process draws them after it, and that is set-up too, not placement.
    first = len(sweep_ids) * min(args.max_concurrent, args.trials)
    while sum(map(scheduler.store.trial_count, sweep_ids)) < first:
        if time.perf_counter() - start > args.max_seconds:
            break
        time.sleep(0.01)
    run.setup_s = time.perf_counter() - start

    # (time.time(), placements so far) at each placement: a job's created_at -> how many
    # placements it waited through.
    timeline_t: list[float] = [time.time()]
    timeline_n: list[int] = [0]
    running: dict[str, job_pb2.Job] = {}
    other_sent = 0
    total = args.sweeps * args.trials

    def place(worker: str) -> None:
        t0 = time.perf_counter()
        job = scheduler.acquire(worker, 0.0)
        if job is None:
            return
        now = time.time()
        run.acquire.append(time.perf_counter() - t0)
        run.placed += 1
        timeline_t.append(now)
        timeline_n.append(run.placed)
        created = job.created_at.ToNanoseconds() / 1e9
        whose = "other" if job.submitter == OTHER_USER else "sweeps"
        run.wait_s[whose].append(now - created)
        run.wait_n[whose].append(
            run.placed - timeline_n[bisect.bisect_right(timeline_t, created) - 1]
        )
        event = job_pb2.Event(
            metrics=job_pb2.Metrics(
                phase="eval", step=1, values={"accuracy": accuracy(job.spec, rng)}
            )
        )
        if args.reports:
            t0 = time.perf_counter()
            scheduler.report(worker, job.id, job.attempt, [event])
            run.report.append(time.perf_counter() - t0)
        running[worker] = job

    def finish(worker: str, job: job_pb2.Job) -> None:
        value = accuracy(job.spec, rng)
        t0 = time.perf_counter()
        scheduler.finish(
            worker, job.id, job.attempt, job_pb2.SUCCEEDED, summary={"eval_accuracy": value}
        )
        run.finish.append(time.perf_counter() - t0)
        chain = chain_of.pop(job.id, None)
        if chain is not None and chain_sent[chain] < args.trials:
            chain_next(chain)

    start = time.perf_counter()
    cpu0 = time.process_time()
    sampler_pid = scheduler.sweeps.sampler_pid
    sampler0 = process_cpu_s(sampler_pid)
    asked0 = sum(map(scheduler.store.trial_count, sweep_ids))

    def expired() -> bool:
        return time.perf_counter() - start > args.max_seconds

    for worker in workers:  # the fill: every worker takes a job
        place(worker)
    # A TPE trial's successor is drawn in the sampler process and queued when its reply
    # comes, so the run goes on until every trial was placed, not just while jobs run.
    while (running or len(run.wait_s["sweeps"]) < total) and not expired():
        if not running:
            time.sleep(0.001)  # every trial asked is done: wait for the next replies
        for worker in workers:
            job = running.pop(worker, None)
            if job is not None:
                finish(worker, job)
            if other_sent * args.other_every < run.placed and len(run.wait_s["sweeps"]) < total:
                scheduler.submit(make_spec(other_sent), submitter=OTHER_USER)
                other_sent += 1
            place(worker)
            if expired():
                break
    run.wall = time.perf_counter() - start
    run.cpu_s = time.process_time() - cpu0
    sampler1 = process_cpu_s(sampler_pid)
    if sampler0 is not None and sampler1 is not None:
        run.sampler_cpu_s = sampler1 - sampler0
    run.asks = sum(map(scheduler.store.trial_count, sweep_ids)) - asked0
    run.timed_out = bool(running)
    if with_sweeps:
        states = [s.state for s in scheduler.sweeps.list(args.sweeps, submitter=None)]
        ended = sum(s == sweep_pb2.SWEEP_SUCCEEDED for s in states)
        run.sweeps_ended = f"{ended}/{len(states)} sweeps succeeded"
    scheduler.close()
    store.close()
    return run


def row(label: str, values: list[float], run: Run | None = None) -> str:
    placed = f"{run.placed:7,}" if run else f"{'':7}"
    rate = f"{run.placed / run.wall:12,.0f}" if run else f"{'':12}"
    return f"{label:28} {placed} {rate} {ms(values, 0.5)} {ms(values, 0.99)} {ms(values, 1.0)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweeps", type=int, default=100)
    ap.add_argument("--trials", type=int, default=100, help="max_trials of each sweep")
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--max-concurrent", type=int, default=20, help="of each sweep")
    ap.add_argument("--submitters", type=int, default=4, help="users the sweeps are split over")
    ap.add_argument(
        "--other-every", type=int, default=10, help="placements between the other user's jobs"
    )
    ap.add_argument("--algorithm", default="tpe", choices=("tpe", "random"))
    ap.add_argument(
        "--in-process-asks",
        action="store_true",
        help="TPE asks in the coordinator's process, not the sampler process (the server's)",
    )
    ap.add_argument(
        "--reports",
        action="store_true",
        help="each job also reports its eval metric (ReportEvents, one commit each) when placed",
    )
    ap.add_argument("--max-seconds", type=float, default=600.0, help="cap per run")
    ap.add_argument(
        "--db-dir",
        type=Path,
        default=None,
        help="where the runs' databases go (default: the temp folder; /dev/shm: no fsync cost)",
    )
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(dir=args.db_dir) as tmp:
        for with_sweeps in (False, True):
            run = simulate(args, with_sweeps=with_sweeps, folder=Path(tmp))
            runs.append(run)
            print(
                f"{run.label}: set up in {run.setup_s:.1f} s; {run.placed:,} placed in "
                f"{run.wall:.1f} s ({len(run.wait_s['other']):,} of them the other user's)"
                + (f"; {run.sweeps_ended}" if run.sweeps_ended else "")
                + ("; STOPPED at --max-seconds" if run.timed_out else ""),
                flush=True,
            )
    print(
        f"\n{'run':28} {'placed':>7} {'placements/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for run in runs:
        print(row(f"{run.label}: acquire", run.acquire, run))
        if run.report:
            print(row(f"{run.label}: report", run.report))
        print(row(f"{run.label}: finish", run.finish))
    print(f"\n{'queued -> placed':28} {'p50 s':>8} {'p99 s':>8} {'p50 placements':>15} {'p99':>7}")
    for run in runs:
        mine = "trials" if run.label == "sweeps" else "stand-ins"
        for whose, name in (("sweeps", mine), ("other", OTHER_USER)):
            waits, counts = run.wait_s[whose], run.wait_n[whose]
            print(
                f"{run.label + ': ' + name:28} {pct(waits, 0.5):8.2f} {pct(waits, 0.99):8.2f} "
                f"{pct(counts, 0.5):15,} {pct(counts, 0.99):7,}"
            )
    plain, sweeps = runs
    rate, base = sweeps.placed / sweeps.wall, plain.placed / plain.wall
    p99 = pct(sweeps.acquire, 0.99) * 1000
    print(
        f"\nsweeps vs plain jobs: placements/s x{rate / base:.2f}, acquire p99 "
        f"x{p99 / (pct(plain.acquire, 0.99) * 1000):.2f}, finish p99 "
        f"x{pct(sweeps.finish, 0.99) / pct(plain.finish, 0.99):.2f}"
    )
    print(
        f"target >= 500 placements/s and p99 < 50 ms (with the sweeps): {rate:,.0f}/s, p99 "
        f"{p99:.1f} ms -> {'met' if rate >= 500 and p99 < 50 and not sweeps.timed_out else 'NOT met'}"
    )
    # Where the CPU goes: on a machine with few cores, the coordinator and the sampler
    # process together may need more than it has, whatever the scheduler's code does.
    coord = sweeps.cpu_s / sweeps.placed * 1000
    line = (
        f"CPU per placement: this process {coord:.2f} ms with the sweeps, "
        f"{plain.cpu_s / plain.placed * 1000:.2f} ms with plain jobs"
    )
    if sweeps.sampler_cpu_s is not None and sweeps.asks:
        per_ask = sweeps.sampler_cpu_s / sweeps.asks * 1000
        total = coord + per_ask * sweeps.asks / sweeps.placed
        line += (
            f"; the sampler process {per_ask:.2f} ms per ask ({sweeps.asks:,} asks): "
            f"{total:.2f} ms in all, so 500 placements/s need {total * 0.5:.1f} cores' time "
            f"(this machine has {os.cpu_count()})"
        )
    print(line)
    other_p99, trials_p50 = pct(sweeps.wait_n["other"], 0.99), pct(sweeps.wait_n["sweeps"], 0.5)
    bound = max(trials_p50, args.submitters + 1)
    print(
        f"fairness: {OTHER_USER}'s jobs wait p99 {other_p99:,} placements vs the trials' median "
        f"{trials_p50:,} -> {'not starved' if other_p99 <= bound else 'STARVED'}"
    )


if __name__ == "__main__":
    main()

"""Scheduler throughput: placements/s and scheduling latency, direct and over real gRPC.

1. Direct: the scheduler core (coordinator/scheduler.py with placement.py, lifecycle.py and
   the store/ package, SQLite on disk) with --workers simulated CPU workers and --jobs
   queued jobs. Every worker takes a job (the fill), then in turn finishes it and takes
   the next, until the queue is empty: about --workers jobs are always running, as on a
   busy fleet. Latency is one AcquireJob (scheduler.acquire) that places a job; FinishJob
   is timed too.
2. gRPC: a real coordinator (start_server) and --grpc-workers fake worker clients (one
   thread and channel each, all in a second process), doing RegisterWorker, then
   AcquireJob -> ReportEvents -> FinishJob until --grpc-jobs submitted jobs are done.
   Latency is the AcquireJob round trip seen by the client.

    .venv/bin/python bench/scheduler.py [--workers 1000] [--jobs 10000]
        [--grpc-workers 50] [--grpc-jobs 2000] [--max-seconds 60]

Targets: >= 500 placements/s, p99 scheduling latency < 50 ms. --max-seconds bounds each
phase (a slow build reports what it placed in that time).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

import grpc

from tunefleet.coordinator import start_server
from tunefleet.coordinator.event_bus import EventBus
from tunefleet.coordinator.scheduler import Scheduler
from tunefleet.coordinator.store import JobStore
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2, spec_pb2


def make_spec(i: int) -> spec_pb2.JobSpec:
    return spec_pb2.JobSpec(
        name=f"bench-{i}",
        model=spec_pb2.ModelSpec(source="hf", name="/models/tiny-bert"),
        data=spec_pb2.DataSpec(source="csv", train="/data/train.csv", eval="/data/eval.csv"),
    )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(values: list[float], q: float) -> str:
    return f"{pct(values, q) * 1000:8.2f}"


# ----------------------------------------------------------------------------- direct


def bench_direct(workers: int, jobs: int, max_s: float, folder: Path) -> dict:
    store = JobStore(folder / "direct.db")
    scheduler = Scheduler(store, EventBus(), check_paths=False, lease_timeout_s=3600.0)
    scheduler.start()  # the lease watch, as in a server: it also explains waits of a big fleet
    ids = [
        scheduler.register_worker(
            f"w{i:04d}", hostname="bench", resources=coordinator_pb2.WorkerResources(cpus=2)
        )
        for i in range(workers)
    ]
    start = time.perf_counter()
    submitted = 0
    while submitted < jobs and time.perf_counter() - start < max_s:
        scheduler.submit(make_spec(submitted))
        submitted += 1
    submit_s = time.perf_counter() - start

    acquire_lat: list[float] = []
    finish_lat: list[float] = []
    running: dict[str, job_pb2.Job] = {}
    start = time.perf_counter()

    def place(worker: str) -> bool:
        t0 = time.perf_counter()
        job = scheduler.acquire(worker, 0.0)
        if job is None:
            return False
        acquire_lat.append(time.perf_counter() - t0)
        running[worker] = job
        return True

    for worker in ids:  # the fill: every worker takes one job
        if len(acquire_lat) >= submitted or time.perf_counter() - start > max_s:
            break
        place(worker)
    while running and time.perf_counter() - start < max_s:
        for worker in ids:
            job = running.pop(worker, None)
            if job is None:
                continue
            t0 = time.perf_counter()
            scheduler.finish(worker, job.id, job.attempt, job_pb2.SUCCEEDED)
            finish_lat.append(time.perf_counter() - t0)
            if len(acquire_lat) < submitted:
                place(worker)
            if time.perf_counter() - start > max_s:
                break
    wall = time.perf_counter() - start
    scheduler.close()
    store.close()
    return {
        "submitted": submitted,
        "submit_per_s": submitted / submit_s,
        "placed": len(acquire_lat),
        "wall": wall,
        "acquire": acquire_lat,
        "finish": finish_lat,
    }


# ----------------------------------------------------------------------------- gRPC


def _worker_clients(
    address: str, workers: int, jobs: int, think_s: float, max_s: float, results
) -> None:
    """The fake workers, in their own process: they must not share the server's GIL.

    Each "trains" a job for `think_s` between its first report and FinishJob."""
    lock = threading.Lock()
    latencies: list[float] = []
    done = [0]
    errors: list[str] = []
    stop = threading.Event()
    ready = threading.Event()

    def worker(n: int) -> None:
        channel = grpc.insecure_channel(address)
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        mine: list[float] = []
        try:
            worker_id = stub.RegisterWorker(
                coordinator_pb2.RegisterWorkerRequest(
                    worker_id=f"g{n:03d}",
                    hostname="bench",
                    resources=coordinator_pb2.WorkerResources(cpus=2),
                ),
                timeout=30,
            ).worker_id
            ready.wait()
            while not stop.is_set():
                t0 = time.perf_counter()
                response = stub.AcquireJob(
                    coordinator_pb2.AcquireJobRequest(worker_id=worker_id, wait_seconds=0.2),
                    timeout=30,
                )
                if not response.HasField("assignment"):
                    with lock:
                        if done[0] >= jobs:
                            break
                    continue
                mine.append(time.perf_counter() - t0)
                job, attempt = response.assignment.job, response.assignment.attempt
                event = job_pb2.Event(log=job_pb2.LogLine(level="info", message="started"))
                stub.ReportEvents(
                    coordinator_pb2.ReportEventsRequest(
                        worker_id=worker_id, job_id=job.id, attempt=attempt, events=[event]
                    ),
                    timeout=30,
                )
                time.sleep(think_s)
                stub.FinishJob(
                    coordinator_pb2.FinishJobRequest(
                        worker_id=worker_id,
                        job_id=job.id,
                        attempt=attempt,
                        state=job_pb2.SUCCEEDED,
                    ),
                    timeout=30,
                )
                with lock:
                    done[0] += 1
        except grpc.RpcError as exc:
            with lock:
                errors.append(f"{exc.code().name}: {exc.details()}")
        finally:
            with lock:
                latencies.extend(mine)
            channel.close()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(workers)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # all registered
    start = time.perf_counter()
    ready.set()
    while time.perf_counter() - start < max_s:
        with lock:
            if done[0] >= jobs:
                break
        time.sleep(0.01)
    wall = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join(timeout=60)
    results.put({"placed": done[0], "wall": wall, "acquire": latencies, "errors": errors})


def bench_grpc(workers: int, jobs: int, think_s: float, max_s: float, folder: Path) -> dict:
    server = start_server(
        db_path=folder / f"grpc-{think_s}.db",
        check_paths=False,
        lease_timeout_s=3600.0,
        max_workers=workers + 16,
    )
    channel = grpc.insecure_channel(server.address)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    start = time.perf_counter()
    for i in range(jobs):
        stub.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=make_spec(i)), timeout=30)
        if time.perf_counter() - start > max_s:
            jobs = i + 1
            break
    submit_s = time.perf_counter() - start
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    clients = context.Process(
        target=_worker_clients, args=(server.address, workers, jobs, think_s, max_s, results)
    )
    clients.start()
    result = results.get(timeout=max_s + 120)
    clients.join(timeout=30)
    channel.close()
    server.stop(grace=1.0)
    return {"submitted": jobs, "submit_per_s": jobs / submit_s, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--grpc-workers", type=int, default=50)
    ap.add_argument("--grpc-jobs", type=int, default=2000)
    ap.add_argument(
        "--grpc-think-s",
        type=float,
        default=0.5,
        help="seconds a fake worker 'trains' each job in the second gRPC run (the first: 0)",
    )
    ap.add_argument("--max-seconds", type=float, default=60.0, help="cap per phase")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        direct = bench_direct(args.workers, args.jobs, args.max_seconds, Path(tmp))
        print(
            f"direct: {direct['submitted']:,} jobs submitted ({direct['submit_per_s']:,.0f}/s), "
            f"{direct['placed']:,} placed in {direct['wall']:.1f} s",
            flush=True,
        )
        rows.append((f"direct, {args.workers} workers: acquire", direct, direct["acquire"]))
        rows.append((f"direct, {args.workers} workers: finish", None, direct["finish"]))
        for think in (0.0, args.grpc_think_s):
            remote = bench_grpc(
                args.grpc_workers, args.grpc_jobs, think, args.max_seconds, Path(tmp)
            )
            print(
                f"gRPC, jobs of {think:g} s: {remote['submitted']:,} submitted "
                f"({remote['submit_per_s']:,.0f}/s), {remote['placed']:,} done in "
                f"{remote['wall']:.1f} s"
                + (f"; errors {remote['errors'][:3]}" if remote["errors"] else ""),
                flush=True,
            )
            label = f"gRPC, {args.grpc_workers} workers, {think:g} s jobs"
            rows.append((label, remote, remote["acquire"]))
    print(
        f"\n{'run':34} {'placed':>7} {'placements/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for label, run, lat in rows:
        placed = f"{run['placed']:7,}" if run else f"{'':7}"
        rate = f"{run['placed'] / run['wall']:12,.0f}" if run else f"{'':12}"
        print(f"{label:34} {placed} {rate} {ms(lat, 0.5)} {ms(lat, 0.99)} {ms(lat, 1.0)}")
    rate = direct["placed"] / direct["wall"]
    p99 = pct(direct["acquire"], 0.99) * 1000
    print(
        f"\ntarget >= 500 placements/s and p99 < 50 ms (direct): {rate:,.0f}/s, p99 "
        f"{p99:.1f} ms -> {'met' if rate >= 500 and p99 < 50 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()

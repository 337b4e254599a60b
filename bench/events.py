"""Event ingest and fan-out: workers report metrics, followers stream them, over real gRPC.

A real coordinator (start_server, SQLite on disk) runs in this process. A second process
runs --jobs fake workers (one thread and channel each): each acquires one job, reports
metrics events in ReportEvents batches of --batch, then finishes the job. A third process
runs --followers followers spread evenly over the jobs, each a StreamEventBatches(follow=True)
from the start of its job until the job ends. Two phases, each on a fresh coordinator:

0. baseline: a bare gRPC server streaming prebuilt events to --followers followers: what
   the transport delivers from one Python process, one message per event. The coordinator
   packs whatever has accumulated into one StreamEventBatches message, so it can exceed this.
1. capacity: no followers; every worker sends --events events as fast as acknowledged.
2. paced: --followers followers; the workers together offer each of --rates events/s for
   --seconds, each sending one batch every --report-interval s as a real worker does (the
   first rate is the target; the second shows latency below saturation).

Reported: events/s ingested (events acknowledged / seconds from the first report to the
last acknowledgement), delivery latency (a follower's receive time minus the event's
`time`, stamped by the worker just before sending its batch), and whether every follower
saw every event of its job once, in order (seq 1, 2, 3...). The latency is also split into
its legs: worker stamp -> ReportEvents handler, handler -> published to followers (the
scheduler lock, the store, the group commit), published -> received (see Stopwatch); and the
coordinator's CPU time per 1,000 events (from the clients' start to the followers' end, so
at low rates the connection set-up dominates it).

    .venv/bin/python bench/events.py [--jobs 100] [--followers 100] [--rates 20000,2000]
        [--seconds 10] [--batch 100]

The worker and follower processes run at --client-nice (default 10): on a 2-core machine
their 200 threads compete with the coordinator for the CPU, which in a cluster they don't.

Targets: >= 20,000 events/s ingested, p99 delivery < 100 ms, nothing lost.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from array import array
from pathlib import Path

import grpc

from tunefleet.coordinator import start_server
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2, spec_pb2

# Every worker and follower its own connection (gRPC would share one per target otherwise,
# and an HTTP/2 connection carries at most 100 streams).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def make_spec(i: int) -> spec_pb2.JobSpec:
    return spec_pb2.JobSpec(
        name=f"events-{i}",
        model=spec_pb2.ModelSpec(source="hf", name="/models/tiny-bert"),
        data=spec_pb2.DataSpec(source="csv", train="/data/train.csv", eval="/data/eval.csv"),
    )


def metrics(step: int) -> job_pb2.Event:
    event = job_pb2.Event()
    m = event.metrics
    m.phase, m.step, m.epoch, m.total_steps = "train", step, step / 1000, 10**6
    m.loss, m.lr, m.samples_per_s = 1.0 / step, 5e-5, 1234.5
    m.lr_groups["head"] = 5e-5
    return event


def _workers(
    address: str,
    job_ids: list[str],
    events: int,
    batch: int,
    rate: float,
    start,
    results,
    nice: int = 0,
) -> None:
    """One thread per job; each sends its batches as fast as acknowledged (rate 0) or paced
    so that all jobs together offer `rate` events/s (a late batch goes at once)."""
    os.nice(nice)
    lock = threading.Lock()
    interval = batch * len(job_ids) / rate if rate > 0 else 0.0
    stagger = interval / len(job_ids)  # workers spread over the interval, not in lockstep
    acked, spans, errors = [0], [], []

    def worker(n: int, job_id: str) -> None:
        channel = grpc.insecure_channel(address, options=OWN_CONNECTION)
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        try:
            worker_id = stub.RegisterWorker(
                coordinator_pb2.RegisterWorkerRequest(
                    worker_id=f"ev{n:03d}", resources=coordinator_pb2.WorkerResources(cpus=2)
                ),
                timeout=30,
            ).worker_id
            response = stub.AcquireJob(
                coordinator_pb2.AcquireJobRequest(worker_id=worker_id, wait_seconds=10),
                timeout=30,
            )
            job, attempt = response.assignment.job, response.assignment.attempt
            start.wait()
            first = time.perf_counter()
            for i, s in enumerate(range(1, events + 1, batch)):
                due = first + n * stagger + i * interval
                if due > time.perf_counter():
                    time.sleep(due - time.perf_counter())
                request = coordinator_pb2.ReportEventsRequest(
                    worker_id=worker_id,
                    job_id=job.id,
                    attempt=attempt,
                    events=[metrics(step) for step in range(s, min(s + batch, events + 1))],
                    batch_seq=i + 1,
                )
                for event in request.events:
                    event.time.GetCurrentTime()
                stub.ReportEvents(request, timeout=60)
                with lock:
                    acked[0] += len(request.events)
            last = time.perf_counter()
            stub.FinishJob(
                coordinator_pb2.FinishJobRequest(
                    worker_id=worker_id, job_id=job.id, attempt=attempt, state=job_pb2.SUCCEEDED
                ),
                timeout=60,
            )
            with lock:
                spans.append((first, last))
        except grpc.RpcError as exc:
            with lock:
                errors.append(f"{exc.code().name}: {exc.details()}")
        finally:
            channel.close()

    threads = [
        threading.Thread(target=worker, args=(n, job_id), daemon=True)
        for n, job_id in enumerate(job_ids)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(b for _, b in spans) - min(a for a, _ in spans) if spans else float("nan")
    results.put({"acked": acked[0], "wall": wall, "errors": errors})


def _followers(
    address: str, job_ids: list[str], followers: int, ready, results, nice: int = 0
) -> None:
    os.nice(nice)
    lock = threading.Lock()
    # Per follower: its job, and per metrics event its seq, `time` and receive time, in
    # arrays (lists of tuples would give the garbage collector 200,000 objects to walk,
    # and its pauses would show up as latency).
    received: list[tuple[str, array, array, array]] = []
    seen: dict[int, tuple[str, int, bool]] = {}
    errors: list[str] = []
    subscribed = threading.Semaphore(0)

    def follower(n: int, job_id: str) -> None:
        channel = grpc.insecure_channel(address, options=OWN_CONNECTION)
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        seqs, sents, nows = array("q"), array("d"), array("d")
        count, expected, in_order = 0, 1, True
        try:
            stream = stub.StreamEventBatches(  # what the SDK's follow uses
                coordinator_pb2.StreamEventsRequest(job_id=job_id, follow=True), timeout=600
            )
            subscribed.release()
            for batch in stream:
                now = time.time()
                for event in batch.events:
                    in_order &= event.seq == expected
                    expected = event.seq + 1
                    if event.WhichOneof("kind") == "metrics":
                        count += 1
                        sent = event.time.ToNanoseconds() / 1e9
                        seqs.append(event.seq)
                        sents.append(sent)
                        nows.append(now)
        except grpc.RpcError as exc:
            with lock:
                errors.append(f"{exc.code().name}: {exc.details()}")
        finally:
            with lock:
                received.append((job_id, seqs, sents, nows))
                seen[n] = (job_id, count, in_order)
            channel.close()

    threads = [
        threading.Thread(target=follower, args=(n, job_ids[n % len(job_ids)]), daemon=True)
        for n in range(followers)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for _ in threads:
        subscribed.acquire()
    time.sleep(0.5)  # the streams are open on the server
    ready.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    results.put(
        {
            "received": received,
            "seen": seen,
            "errors": errors,
            "wall": wall,
        }
    )


class _TransportCeiling(coordinator_pb2_grpc.CoordinatorServicer):
    """The baseline: a server that only streams prebuilt events (no store, no scheduler)."""

    def __init__(self, events: int):
        self.events = [metrics(i + 1) for i in range(events)]
        for i, event in enumerate(self.events):
            event.seq = i + 1

    def StreamEventBatches(self, request, context):
        # One event per message: what a stream costs without batching.
        for event in self.events:
            yield coordinator_pb2.EventBatch(events=[event])


def transport_ceiling(followers: int, events: int, nice: int) -> float:
    """Events/s that gRPC alone delivers to `followers` streams from this process."""
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=followers + 8))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(_TransportCeiling(events), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    context = multiprocessing.get_context("spawn")
    results, ready = context.Queue(), context.Event()
    job_ids = [f"raw-{n}" for n in range(followers)]
    proc = context.Process(
        target=_followers, args=(f"127.0.0.1:{port}", job_ids, followers, ready, results, nice)
    )
    proc.start()
    got = results.get(timeout=600)
    proc.join(timeout=30)
    server.stop(grace=1.0)
    return sum(count for _, count, _ in got["seen"].values()) / got["wall"]


class Stopwatch:
    """Where an event's delivery latency goes, timed inside the coordinator: when its
    ReportEvents call reached the handler, and when the bus published it to followers.

    Wraps the coordinator's own Scheduler.report and EventBus.publish (instrumentation of
    the real objects in this process; nothing is replaced)."""

    def __init__(self, server):
        # Per job, indexed by seq: when its report reached the handler, when it was
        # published (arrays: see _followers).
        self.arrived: dict[str, array] = {}
        self.published: dict[str, array] = {}
        report, publish = server.scheduler.report, server.bus.publish

        def timed_report(worker_id, job_id, attempt, events, batch_seq=0):
            start = time.time()
            last_seq = report(worker_id, job_id, attempt, events, batch_seq)
            _stamp(self.arrived, job_id, last_seq - len(events) + 1, last_seq, start)
            return last_seq

        def timed_publish(job_id, seq, events=()):
            publish(job_id, seq, events)
            if events:
                _stamp(self.published, job_id, events[0].seq, events[-1].seq, time.time())

        server.scheduler.report = timed_report
        server.bus.publish = timed_publish

    def breakdown(self, received: list[tuple[str, array, array, array]]) -> dict[str, list[float]]:
        """Per delivered event: worker stamp -> handler, handler -> published (store and
        group commit), published -> follower's receive (wake-up, send, client)."""
        parts: dict[str, list[float]] = {"to handler": [], "store": [], "fan-out": []}
        for job_id, seqs, sents, nows in received:
            arrived, published = self.arrived.get(job_id), self.published.get(job_id)
            if arrived is None or published is None:
                continue
            for seq, sent, got in zip(seqs, sents, nows, strict=True):
                if seq >= len(arrived) or seq >= len(published) or not arrived[seq]:
                    continue
                parts["to handler"].append(arrived[seq] - sent)
                parts["store"].append(published[seq] - arrived[seq])
                parts["fan-out"].append(got - published[seq])
        return parts


def _stamp(times: dict[str, array], job_id: str, first: int, last: int, when: float) -> None:
    stamps = times.setdefault(job_id, array("d"))
    if len(stamps) <= last:
        stamps.extend([0.0] * (last + 1 - len(stamps)))
    for seq in range(first, last + 1):
        stamps[seq] = when


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(args, *, followers: int, events: int, rate: float, batch: int, tmp: Path) -> dict:
    """One coordinator, the workers' process and the followers' process; the results."""
    context = multiprocessing.get_context("spawn")
    server = start_server(
        db_path=tmp / f"events-{followers}-{rate:g}.db",
        check_paths=False,
        lease_timeout_s=3600.0,
        max_workers=args.jobs + 16,  # reports; follows and long polls have their own pools
    )
    stopwatch = Stopwatch(server)
    channel = grpc.insecure_channel(server.address)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    job_ids = [
        stub.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=make_spec(i)), timeout=30).id
        for i in range(args.jobs)
    ]
    ready = context.Event()
    worker_results, follower_results = context.Queue(), context.Queue()
    follower_proc = context.Process(
        target=_followers,
        args=(server.address, job_ids, followers, ready, follower_results, args.client_nice),
    )
    worker_proc = context.Process(
        target=_workers,
        args=(
            server.address,
            job_ids,
            events,
            batch,
            rate,
            ready,
            worker_results,
            args.client_nice,
        ),
    )
    follower_proc.start()
    worker_proc.start()
    cpu0 = os.times()  # this process is the coordinator (the clients are others)
    reported = worker_results.get(timeout=900)
    followed = follower_results.get(timeout=300)
    cpu1 = os.times()
    worker_proc.join(timeout=30)
    follower_proc.join(timeout=30)
    channel.close()
    server.stop(grace=1.0)
    lat = [
        got - sent
        for _, _, sents, nows in followed["received"]
        for sent, got in zip(sents, nows, strict=True)
    ]
    complete = sum(
        1 for _, count, in_order in followed["seen"].values() if count == events and in_order
    )
    return {
        "acked": reported["acked"],
        "wall": reported["wall"],
        "rate": reported["acked"] / reported["wall"],
        "deliveries": len(lat),
        "follow_wall": followed["wall"],
        "lat": lat,
        "cpu": cpu1.user + cpu1.system - cpu0.user - cpu0.system,
        "parts": stopwatch.breakdown(followed["received"]),
        "complete": complete,
        "errors": reported["errors"] + followed["errors"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=100, help="jobs = reporting workers")
    ap.add_argument("--followers", type=int, default=100)
    ap.add_argument("--rates", default="20000,2000", help="offered events/s, phase 2 runs")
    ap.add_argument("--seconds", type=float, default=10, help="length of each phase 2 run")
    ap.add_argument("--events", type=int, default=1000, help="events per job, phase 1")
    ap.add_argument("--batch", type=int, default=100, help="events per ReportEvents, phase 1")
    ap.add_argument(
        "--report-interval", type=float, default=0.5, help="seconds between batches, phase 2"
    )
    ap.add_argument(
        "--client-nice",
        type=int,
        default=10,
        help="niceness of the worker and follower processes: on a small machine their 200 "
        "threads would otherwise take the coordinator's CPU, which in a real cluster they "
        "do not share (0 = same priority)",
    )
    args = ap.parse_args()
    print(
        f"{args.jobs} workers, {args.followers} followers; load "
        f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    rates = [float(r) for r in args.rates.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        ceiling = transport_ceiling(args.followers, args.events, args.client_nice)
        print(f"baseline: gRPC alone streams {ceiling:,.0f} events/s to {args.followers} followers")
        capacity = run(
            args, followers=0, events=args.events, rate=0, batch=args.batch, tmp=Path(tmp)
        )
        print(f"phase 1, as fast as acknowledged, no followers: {capacity['rate']:,.0f} events/s")
        for rate in rates:
            # Like a real worker: one batch per job every --report-interval seconds.
            batch = max(round(rate / args.jobs * args.report_interval), 1)
            events = batch * max(round(args.seconds / args.report_interval), 1)
            paced = run(
                args, followers=args.followers, events=events, rate=rate, batch=batch, tmp=Path(tmp)
            )
            expected = events * args.followers  # every follower follows one job to its end
            paced.update(offered=rate, missing=expected - paced["deliveries"])
            runs.append(paced)
            print(
                f"phase 2 at {rate:,.0f} events/s offered: {paced['rate']:,.0f} ingested",
                flush=True,
            )

    def cells(fn) -> str:
        return "".join(f" {fn(r):>10}" for r in runs)

    print(f"\n{'':42} {'phase 1':>10}" + "".join(f" {'phase 2':>10}" for _ in runs))
    print(f"{'offered events/s':42} {'max':>10}" + cells(lambda r: f"{r['offered']:,.0f}"))
    print(f"{'followers':42} {0:>10}" + cells(lambda r: f"{args.followers}"))
    print(f"{'events ingested':42} {capacity['acked']:>10,}" + cells(lambda r: f"{r['acked']:,}"))
    print(
        f"{'events/s ingested':42} {capacity['rate']:>10,.0f}"
        + cells(lambda r: f"{r['rate']:,.0f}")
    )
    print(
        f"{'deliveries (event x follower)':42} {'':>10}" + cells(lambda r: f"{r['deliveries']:,}")
    )
    print(
        f"{'deliveries/s':42} {'':>10}"
        + cells(lambda r: f"{r['deliveries'] / r['follow_wall']:,.0f}")
    )
    print(f"{'baseline: gRPC alone, deliveries/s':42} {ceiling:>10,.0f}")
    print(
        f"{'coordinator CPU ms per 1,000 events':42} "
        f"{capacity['cpu'] / capacity['acked'] * 1e6:>10.0f}"
        + cells(lambda r: f"{r['cpu'] / r['acked'] * 1e6:.0f}")
    )
    for q in (0.5, 0.99, 1.0):
        label = "max" if q == 1.0 else f"p{int(q * 100)}"
        print(
            f"{'delivery latency ' + label + ' ms':42} {'':>10}"
            + cells(lambda r, q=q: f"{pct(r['lat'], q) * 1000:.1f}")
        )
    for part in runs[0]["parts"]:
        print(
            f"{'  ' + part + ' p50 / p99 ms':42} {'':>10}"
            + cells(
                lambda r, part=part: (
                    f"{pct(r['parts'][part], 0.5) * 1000:.1f}/"
                    f"{pct(r['parts'][part], 0.99) * 1000:.0f}"
                )
            )
        )
    print(
        f"{'followers: every event once, in order':42} {'':>10}"
        + cells(lambda r: f"{r['complete']}/{args.followers}")
    )
    print(f"{'deliveries missing':42} {'':>10}" + cells(lambda r: f"{r['missing']:,}"))
    errors = capacity["errors"] + [e for r in runs for e in r["errors"]]
    if errors:
        print(f"errors: {errors[:3]}")
    first = runs[0]
    p99 = pct(first["lat"], 0.99) * 1000
    ok = (
        capacity["rate"] >= 20000
        and first["rate"] >= 0.98 * first["offered"]
        and p99 < 100
        and all(r["missing"] == 0 and r["complete"] == args.followers for r in runs)
    )
    print(
        f"\ntarget >= 20,000 events/s, p99 < 100 ms, none lost: capacity {capacity['rate']:,.0f}/s; "
        f"at {first['offered']:,.0f}/s offered {first['rate']:,.0f}/s ingested, p99 {p99:.0f} ms; "
        f"{sum(r['missing'] for r in runs):,} missing -> " + ("met" if ok else "NOT met")
    )


if __name__ == "__main__":
    main()

"""The web dashboard's figures (issue 17): how late a point reaches an open job page, what
the page weighs, and what open pages cost the coordinator, all measured in one run.

A real coordinator (`python -m tunefleet.coordinator`, SQLite on disk, no tokens) and a
real dashboard (`ftctl dashboard`) run as child processes on 127.0.0.1. This process
submits one job and acts as its worker over the worker-side gRPC calls (RegisterWorker,
AcquireJob, ReportEvents: what tests/coordinator's `Worker` drives), sending one train
metrics event per ReportEvents at --rate events/s, so it decides when each event leaves.
Pages are Debian's headless Chromium driven by Playwright, one browser, one context each.

1. Page weight: everything the job page loads (the page, script, style, vendored uPlot and
   the job's JSON; not its never-ending event stream), uncompressed and gzip -6.
2. Three windows of --window s each, the job emitting at --rate throughout, the
   coordinator's CPU time (user + system, /proc via psutil) over each:
   A. no page open;
   B. --pages job pages open; their draws give the latency figure (below);
   C. no page, --followers `ftctl logs -f JOB` processes instead (the issue: a page should
      cost the coordinator what one `ftctl logs -f` does).
   The dashboard's own CPU over each window is printed too.

Latency: an event's time on the coordinator (the ReportEvents handler stamps `time` on
events that arrive without one) to the page drawing the loss chart with its point in it
(the page's `window.tfDrawLog` hook, see dashboard.js's Chart: off unless the page defines
it first, as this script does before the page's own script runs). Same machine, same clock.
Each page's each event is one sample. The worker's send time is kept too, to show that the
leg to the coordinator is small.

    .venv/bin/python bench/dashboard.py [--pages 20] [--rate 5] [--window 20]
        [--followers 20]

Runs about two minutes. Needs the `dashboard` extra, playwright and Chromium
(`/usr/bin/chromium`, or --chromium).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import psutil

from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2, spec_pb2

RPC_TIMEOUT = 30.0
INIT_SCRIPT = "window.tfDrawLog = [];"  # turns on dashboard.js's draw log (see Chart.draw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class FakeWorker:
    """One job's worker: metrics events at a steady rate, one per ReportEvents."""

    def __init__(self, address: str, folder: Path):
        (folder / "model").mkdir()  # the spec's paths must exist; nothing reads them
        for name in ("train.csv", "eval.csv"):
            (folder / name).write_text("text,label\nhello,0\n")
        self.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        spec = spec_pb2.JobSpec(
            name="dashboard-bench",
            model=spec_pb2.ModelSpec(source="hf", name=str(folder / "model")),
            data=spec_pb2.DataSpec(
                source="csv", train=str(folder / "train.csv"), eval=str(folder / "eval.csv")
            ),
        )
        self.job_id = self.stub.SubmitJob(
            coordinator_pb2.SubmitJobRequest(spec=spec), timeout=RPC_TIMEOUT
        ).id
        self.worker_id = self.stub.RegisterWorker(
            coordinator_pb2.RegisterWorkerRequest(
                worker_id="bench-worker",
                hostname="bench",
                resources=coordinator_pb2.WorkerResources(cpus=2),
            ),
            timeout=RPC_TIMEOUT,
        ).worker_id
        response = self.stub.AcquireJob(
            coordinator_pb2.AcquireJobRequest(worker_id=self.worker_id, wait_seconds=10),
            timeout=RPC_TIMEOUT,
        )
        assert response.HasField("assignment"), "the job was not assigned"
        self.attempt = response.assignment.attempt
        self.step = 0
        self.batch = 0
        self.sent: dict[int, float] = {}  # step -> wall time just before ReportEvents

    def emit(self, seconds: float, rate: float) -> range:
        """Sends one metrics event every 1/rate s for `seconds`; returns the steps sent."""
        first_step = self.step + 1
        start = time.perf_counter()
        for i in range(round(seconds * rate)):
            due = start + i / rate
            if due > time.perf_counter():
                time.sleep(due - time.perf_counter())
            self.step += 1
            self.batch += 1
            event = job_pb2.Event()  # no `time`: the coordinator stamps it on arrival
            m = event.metrics
            m.phase, m.step, m.epoch, m.total_steps = "train", self.step, 0.0, 10**6
            m.loss, m.lr, m.samples_per_s = 1.0 / self.step, 5e-5, 1234.5
            self.sent[self.step] = time.time()
            self.stub.ReportEvents(
                coordinator_pb2.ReportEventsRequest(
                    worker_id=self.worker_id,
                    job_id=self.job_id,
                    attempt=self.attempt,
                    events=[event],
                    batch_seq=self.batch,
                ),
                timeout=RPC_TIMEOUT,
            )
        return range(first_step, self.step + 1)

    def arrival_times(self) -> dict[int, float]:
        """step -> the `time` the coordinator stamped on that metrics event."""
        out = {}
        stream = self.stub.StreamEventBatches(
            coordinator_pb2.StreamEventsRequest(job_id=self.job_id, follow=False),
            timeout=RPC_TIMEOUT,
        )
        for batch in stream:
            for event in batch.events:
                if event.WhichOneof("kind") == "metrics":
                    out[event.metrics.step] = event.time.ToNanoseconds() / 1e9
        return out

    def finish(self) -> None:
        self.stub.FinishJob(
            coordinator_pb2.FinishJobRequest(
                worker_id=self.worker_id,
                job_id=self.job_id,
                attempt=self.attempt,
                state=job_pb2.SUCCEEDED,
            ),
            timeout=RPC_TIMEOUT,
        )
        self.channel.close()


def page_weight(browser, url: str) -> list[tuple[str, int, int]]:
    """(url path, bytes, gzip -6 bytes) of every response the job page loads, in a fresh
    context (empty cache); its event stream (text/event-stream) is left out."""
    context = browser.new_context()
    page = context.new_page()
    responses = []
    page.on("response", lambda r: responses.append(r))
    try:
        page.goto(url, wait_until="load")
        page.wait_for_selector(".chart[data-title='Loss']:not([data-points='0'])", timeout=30_000)
        out = []
        for r in responses:
            if "event-stream" in r.headers.get("content-type", ""):
                continue
            body = r.body()
            out.append((r.url.split("/", 3)[-1], len(body), len(gzip.compress(body, 6))))
        return out
    finally:
        context.close()


def loss_points(page) -> int:
    return int(page.get_attribute(".chart[data-title='Loss']", "data-points") or 0)


def measure(label: str, coordinator, dashboard, worker: FakeWorker, args) -> dict:
    c0, d0, t0 = cpu_seconds(coordinator), cpu_seconds(dashboard), time.perf_counter()
    steps = worker.emit(args.window, args.rate)
    c1, d1, t1 = cpu_seconds(coordinator), cpu_seconds(dashboard), time.perf_counter()
    wall = t1 - t0
    result = {
        "label": label,
        "wall": wall,
        "events": len(steps),
        "steps": steps,
        "coordinator": c1 - c0,
        "dashboard": d1 - d0,
    }
    print(
        f"  {label}: {len(steps)} events in {wall:.1f} s; coordinator CPU "
        f"{c1 - c0:.2f} s ({100 * (c1 - c0) / wall:.1f}% of a core), dashboard CPU "
        f"{d1 - d0:.2f} s",
        flush=True,
    )
    return result


def start_followers(ftctl: str, address: str, job_id: str, n: int, env) -> list:
    """n `ftctl logs -f` processes; returns once each has printed a line (it is following)."""
    procs, lines = [], [0] * n

    def drain(i: int, stream) -> None:
        for _ in stream:
            lines[i] += 1

    for i in range(n):
        p = subprocess.Popen(
            [ftctl, "logs", "-f", job_id, "--coordinator", address],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        threading.Thread(target=drain, args=(i, p.stdout), daemon=True).start()
        procs.append(p)
    wait_for(lambda: all(lines), 120, f"{n} `ftctl logs -f` to print")
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--rate", type=float, default=5.0, help="metrics events/s")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per window")
    parser.add_argument("--followers", type=int, default=20, help="0: skip window C")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    bindir = Path(sys.executable).parent
    ftctl = str(bindir / "ftctl")
    env = child_env()
    tmp = Path(tempfile.mkdtemp(prefix="dashbench-"))
    address = f"127.0.0.1:{free_port()}"
    dash_url = f"http://127.0.0.1:{free_port()}"
    procs: list[subprocess.Popen] = []
    followers: list[subprocess.Popen] = []
    log = (tmp / "children.log").open("wb")
    try:
        coordinator = subprocess.Popen(
            [sys.executable, "-m", "tunefleet.coordinator", "--listen", address,
             "--db", str(tmp / "coordinator.db"), "--lease-s", "3600"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        procs.append(coordinator)
        dashboard = subprocess.Popen(
            [ftctl, "dashboard", "--coordinator", address,
             "--listen", dash_url.removeprefix("http://")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        procs.append(dashboard)
        worker = FakeWorker(address, tmp)
        job_url = f"{dash_url}/jobs/{worker.job_id}"

        def dashboard_up() -> bool:
            try:
                with urllib.request.urlopen(dash_url + "/", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(dashboard_up, 60, "the dashboard")
        coord_ps, dash_ps = psutil.Process(coordinator.pid), psutil.Process(dashboard.pid)
        worker.emit(1.0, args.rate)  # a few points for the page weight's chart
        print(
            f"coordinator {address} (pid {coordinator.pid}), dashboard {dash_url} "
            f"(pid {dashboard.pid}), job {worker.job_id}; {args.rate:g} metrics events/s, "
            f"one per ReportEvents; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=args.chromium, headless=True, args=["--no-sandbox"]
            )
            weights = page_weight(browser, job_url)
            print("\nPage weight of /jobs/JOB (empty cache; its event stream left out):")
            seen: dict[str, list] = {}
            for path, raw, gz in weights:
                seen.setdefault(path, [0, raw, gz])[0] += 1
            for path, (n, raw, gz) in seen.items():
                times = f" (x{n}: refetched on each state change)" if n > 1 else ""
                print(f"  /{path}: {raw / 1000:.1f} KB, gzip {gz / 1000:.1f} KB{times}")
            static = [w for w in weights if not w[0].startswith("api/")]
            for what, rows in (("page, script, style", static), ("with its JSON", weights)):
                raw_total = sum(w[1] for w in rows) / 1000
                gz_total = sum(w[2] for w in rows) / 1000
                print(f"  total, {what}: {raw_total:.1f} KB, gzipped {gz_total:.1f} KB")

            print(f"\nCoordinator CPU over {args.window:g} s windows:", flush=True)
            a = measure("A, no page open", coord_ps, dash_ps, worker, args)

            contexts, pages = [], []
            for _ in range(args.pages):
                context = browser.new_context()
                context.add_init_script(INIT_SCRIPT)
                page = context.new_page()
                page.goto(job_url, wait_until="load")
                contexts.append(context)
                pages.append(page)
            for page in pages:  # every page has caught up with the job's past events
                wait_for(lambda page=page: loss_points(page) >= worker.step, 60, "a page")
            time.sleep(1.0)
            b = measure(f"B, {args.pages} job pages open", coord_ps, dash_ps, worker, args)
            last = b["steps"][-1]
            for page in pages:
                wait_for(lambda page=page: loss_points(page) >= last, 30, "the last point")
            time.sleep(0.5)  # the last frame's draw is logged
            draw_logs = [page.evaluate("window.tfDrawLog") for page in pages]
            for context in contexts:
                context.close()
            browser.close()

        c = None
        if args.followers:
            followers = start_followers(ftctl, address, worker.job_id, args.followers, env)
            time.sleep(1.0)
            c = measure(f"C, {args.followers} `ftctl logs -f`", coord_ps, dash_ps, worker, args)

        arrived = worker.arrival_times()
        latencies, from_send = [], []
        for entries in draw_logs:
            drawn = sorted((n, t / 1000) for title, n, t in entries if title == "Loss")
            i = 0
            for step in b["steps"]:  # steps are 1, 2, 3...: step k's point is the k-th x
                while i < len(drawn) and drawn[i][0] < step:
                    i += 1
                if i == len(drawn):
                    break
                latencies.append(drawn[i][1] - arrived[step])
                from_send.append(drawn[i][1] - worker.sent[step])
        legs = [arrived[s] - worker.sent[s] for s in b["steps"]]

        print(f"\nLatency, event on the coordinator -> its point drawn, {args.pages} pages:")
        print(
            f"  {len(latencies)} samples ({args.pages} pages x {b['events']} events): "
            f"p50 {1000 * statistics.median(latencies):.1f} ms, "
            f"p99 {1000 * percentile(latencies, 99):.1f} ms, "
            f"max {1000 * max(latencies):.1f} ms"
        )
        print(
            f"  (worker send -> coordinator stamp: p50 {1000 * statistics.median(legs):.1f} ms; "
            f"send -> drawn p99 {1000 * percentile(from_send, 99):.1f} ms)"
        )
        print("\nCoordinator CPU, same event rate:")
        print(f"  no page:           {a['coordinator']:.2f} s")
        print(
            f"  {args.pages} pages:          {b['coordinator']:.2f} s "
            f"({b['coordinator'] / a['coordinator']:.2f}x no page)"
        )
        if c is not None:
            print(
                f"  {args.followers} ftctl logs -f:  {c['coordinator']:.2f} s "
                f"({c['coordinator'] / a['coordinator']:.2f}x no page; "
                f"{args.pages} pages / {args.followers} followers = "
                f"{b['coordinator'] / c['coordinator']:.2f}x)"
            )
        print(
            f"  (the dashboard process itself: {a['dashboard']:.2f} s with no page, "
            f"{b['dashboard']:.2f} s with {args.pages})"
        )
        worker.finish()
    finally:
        for p in followers + procs[::-1]:
            if p.poll() is None:
                p.terminate()
        for p in followers + procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

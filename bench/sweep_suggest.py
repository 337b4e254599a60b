"""Does `ftctl sweep suggest`'s first pick come close to the best of the space it proposes?

For each task, `ftctl sweep suggest JOB.yaml -o sweep.yaml` proposes a space from the data's
size (tunefleet.spec.advice: few examples per class -> a probe first, many -> full
fine-tuning first); the whole proposed grid then runs on one LocalCluster worker, and the
first pick's validation accuracy (the first grid point: the one run to make if only one is
made) is compared with the grid's best.

Tasks (offline): the topic headlines of examples/minilm-topics.yaml (1,600 examples, 4
classes: "many per class"), and the 26 Debian archive sections of bench/quality_vs_trainer.py
cut to --few-per-class examples per class ("few per class"). all-MiniLM-L6-v2 throughout.

    .venv/bin/python bench/sweep_suggest.py [--tasks topics,sections-few] [--epochs 2]

Target (issue 16, item 4): the first pick within 1 point of the sweep's best on each task.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
FTCTL = Path(sys.executable).parent / "ftctl"


def few_per_class(src: Path, dst: Path, per_class: int) -> Path:
    """The first `per_class` rows of each label of a CSV (the file's own order)."""
    kept: dict[str, int] = defaultdict(int)
    with src.open(newline="", encoding="utf-8") as f, dst.open("w", newline="") as out:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames)
        writer.writeheader()
        for row in reader:
            if kept[row["label"]] < per_class:
                kept[row["label"]] += 1
                writer.writerow(row)
    return dst


def tasks(root: Path, names: list[str], epochs: int, per_class: int) -> dict[str, Path]:
    jobs: dict[str, Path] = {}
    if "topics" in names:
        job = yaml.safe_load((ROOT / "examples" / "minilm-topics.yaml").read_text())
        for key in ("train", "eval"):
            job["data"][key] = str(ROOT / "examples" / job["data"][key])
        job["train"]["epochs"] = epochs
        jobs["topics"] = root / "topics.yaml"
        jobs["topics"].write_text(yaml.safe_dump(job))
    if "sections-few" in names:
        data = root / "sections"
        script = ROOT / "examples" / "data" / "make_debian_sections.py"
        subprocess.run([sys.executable, str(script), str(data)], check=True)
        train = few_per_class(data / "train.csv", root / "sections-few.csv", per_class)
        job = {
            "name": "sections-few",
            "model": {"source": "hf", "name": "sentence-transformers/all-MiniLM-L6-v2"},
            "data": {"source": "csv", "train": str(train), "eval": str(data / "test.csv"),
                     "max_length": 64, "limit_eval": 1000},
            "train": {"epochs": epochs * 5, "batch_size": 16, "seed": 0},
            "eval": {"metric": "accuracy"},
        }  # fmt: skip
        jobs["sections-few"] = root / "sections-few.yaml"
        jobs["sections-few"].write_text(yaml.safe_dump(job))
    return jobs


def run_task(cluster, name: str, job_file: Path) -> tuple[float, float]:
    sweep_file = job_file.with_suffix(".sweep.yaml")
    said = subprocess.run(
        [FTCTL, "sweep", "suggest", str(job_file), "-o", str(sweep_file)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    print(f"\n{name}: {said.stderr.splitlines()[0]}", flush=True)
    space = yaml.safe_load(sweep_file.read_text())["sweep"]["space"]
    pick = (space["finetune.strategy"][0], float(space["optimizer.lr"]["values"][0]))
    with cluster.client() as client:
        start = time.perf_counter()
        final = client.submit_sweep(str(sweep_file)).wait(poll_s=1.0)
        wall = time.perf_counter() - start
    first = 0.0
    for t in sorted(final.trials, key=lambda t: t.number):
        value = "-" if t.value is None else f"{t.value:.4f}"
        print(f"  t{t.number:<2} {t.trial_state:9} {value:>7}  {t.params}")
        lr = float(t.params.get("optimizer.lr", "nan"))
        if (t.params["finetune.strategy"], lr) == pick:  # the grid runs in a random order
            first = t.value or 0.0
    best = final.best().value
    print(f"  {final.state.value} in {wall:.0f} s: first pick {first:.4f}, best {best:.4f}")
    return first, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="topics,sections-few")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--few-per-class", type=int, default=8)
    args = ap.parse_args()
    from tunefleet.client import LocalCluster

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = tasks(root, args.tasks.split(","), args.epochs, args.few_per_class)
        with LocalCluster(
            db_path=root / "cluster" / "coordinator.db", worker_log=root / "w.log"
        ) as cluster:
            results = {name: run_task(cluster, name, path) for name, path in jobs.items()}
    print(f"\n{'task':14} {'first pick':>10} {'best':>8} {'gap':>8}")
    for name, (first, best) in results.items():
        print(f"{name:14} {first:10.4f} {best:8.4f} {(best - first) * 100:+7.2f}pt")
    met = all((best - first) * 100 <= 1.0 for first, best in results.values())
    print(
        f"\ntarget (first pick within 1 point of the best, every task): {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()

"""Head-only fine-tune of all-MiniLM-L6-v2: our engine (frozen-feature cache) vs HF Trainer.

Both train the same parameters (pooler + a new classifier; embeddings and the 6 encoder
layers frozen) with the same hyperparameters, evaluate after every epoch, and are timed end
to end in this process: load the model, tokenise, train, evaluate (wall seconds, and the
CPU seconds of this process, which other load on the machine disturbs less). The engine runs the frozen
encoder once per example and trains the head on the stored outputs (worker/engine/
feature_cache.py); the Trainer pushes every batch through the encoder in every epoch. Data:
topic headlines generated with examples/data/make_topics.py into a temporary folder (the
committed CSVs are not touched).

    .venv/bin/python bench/frozen_features.py                # 1,000 examples, 3 epochs (~3 min)
    .venv/bin/python bench/frozen_features.py --train-size 4000 --epochs 10 --eval-size 400
                                                     # the 4,000-example, 10-epoch case (long)
    .venv/bin/python bench/frozen_features.py --uncached     # also: our engine, cache off
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hf_baseline import minilm, run_hf_trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HP = dict(lr=1e-3, batch_size=32, eval_batch_size=64, max_length=48, weight_decay=0.01, seed=0)


def make_data(folder: Path, n_train: int, n_test: int) -> tuple[Path, Path]:
    spec = importlib.util.spec_from_file_location(
        "make_topics", ROOT / "examples" / "data" / "make_topics.py"
    )
    make_topics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_topics)
    make_topics.main(folder, n_train=n_train, n_test=n_test)
    return folder / "train.csv", folder / "test.csv"


def run_trainer(data: tuple[Path, Path], epochs: int, out: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, final eval accuracy)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    run = run_hf_trainer(
        data,
        out,
        epochs=epochs,
        lr=HP["lr"],
        batch_size=HP["batch_size"],
        eval_batch_size=HP["eval_batch_size"],
        max_length=HP["max_length"],
        weight_decay=HP["weight_decay"],
        max_grad_norm=1.0,
        seed=HP["seed"],
        # the engine's head_only: pooler + classifier
        trainable=lambda name: name.startswith(("bert.pooler.", "classifier.")),
        logging_steps=50,
    )
    return run.wall_s, run.cpu_s, run.accuracy


def run_engine(
    data: tuple[Path, Path], epochs: int, out: Path, *, cache: str
) -> tuple[float, float, float, list[str]]:
    """(wall seconds, CPU seconds, final eval accuracy, the feature cache's log lines)."""
    from tunefleet.spec import prepare
    from tunefleet.worker.engine import run_job

    spec = prepare(
        {
            "name": "bench-frozen-features",
            "model": {"source": "hf", "name": str(minilm())},
            "data": {
                "source": "csv",
                "train": str(data[0]),
                "eval": str(data[1]),
                "max_length": HP["max_length"],
            },
            "finetune": {"strategy": "head_only", "feature_cache": cache},
            "optimizer": {"name": "adamw", "lr": HP["lr"], "weight_decay": HP["weight_decay"]},
            "schedule": {"name": "linear"},
            "train": {"epochs": epochs, "batch_size": HP["batch_size"], "seed": HP["seed"]},
            "eval": {"batch_size": HP["eval_batch_size"]},
        }
    )
    notes: list[str] = []

    last_accuracy = [float("nan")]  # the last eval, as the Trainer's (summary has the best)

    def emit(event) -> None:
        kind = event.WhichOneof("kind")
        if kind == "log" and event.log.message.startswith("feature cache"):
            notes.append(event.log.message)
        if kind == "metrics" and event.metrics.phase == "eval":
            last_accuracy[0] = event.metrics.values["accuracy"]

    start, cpu = time.perf_counter(), time.process_time()
    run_job(spec, out, emit, resume=False)
    return time.perf_counter() - start, time.process_time() - cpu, last_accuracy[0], notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-size", type=int, default=1000)
    ap.add_argument("--eval-size", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--uncached", action="store_true", help="also run the engine, cache off")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    load = os.getloadavg()[0]
    print(
        f"head_only all-MiniLM-L6-v2, {args.train_size:,} train / {args.eval_size:,} eval "
        f"examples, {args.epochs} epochs, batch {HP['batch_size']}, max_length "
        f"{HP['max_length']}, {torch.get_num_threads()} threads, load average {load:.1f}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", args.train_size, args.eval_size)
        wall, cpu, acc = run_trainer(data, args.epochs, Path(tmp) / "trainer")
        rows.append(("HF Trainer", wall, cpu, acc))
        print(f"  HF Trainer        {wall:7.1f} s  accuracy {acc:.4f}", flush=True)
        runs = [("engine (cache)", "auto")] + (
            [("engine (no cache)", "off")] if args.uncached else []
        )
        for label, cache in runs:
            wall, cpu, acc, notes = run_engine(data, args.epochs, Path(tmp) / cache, cache=cache)
            rows.append((label, wall, cpu, acc))
            print(f"  {label:17} {wall:7.1f} s  accuracy {acc:.4f}", flush=True)
            for note in notes:
                print(f"    {note}", flush=True)
    base_wall, base_cpu = rows[0][1], rows[0][2]
    print(f"\nload average now {os.getloadavg()[0]:.1f}")
    print(
        f"{'run':18} {'wall s':>7} {'samples/s':>9} {'speedup':>8} {'CPU s':>7} "
        f"{'CPU speedup':>11} {'accuracy':>8}"
    )
    for label, wall, cpu, acc in rows:
        sps = args.train_size * args.epochs / wall
        print(
            f"{label:18} {wall:7.1f} {sps:9.1f} {base_wall / wall:7.2f}x {cpu:7.1f} "
            f"{base_cpu / cpu:10.2f}x {acc:8.4f}"
        )


if __name__ == "__main__":
    main()

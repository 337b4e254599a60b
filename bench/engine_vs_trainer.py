"""Our engine vs a plain HF Trainer script: same model, data and hyperparameters.

Runs alternate (trainer, engine, trainer, engine, ...) so that machine noise hits both
alike; each run is timed end to end (load model, tokenise, train, evaluate), which is
what a user waits for. Prints samples/s for each, the ratio ours/Trainer and both final
accuracies.

    .venv/bin/python bench/engine_vs_trainer.py [--strategies full,last_k,head_only]
        [--epochs 1] [--repeats 1] [--limit-train 1600]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hf_baseline import minilm, run_hf_trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "topics"
HP = dict(lr=5e-5, batch_size=32, max_length=48, weight_decay=0.01, max_grad_norm=1.0, seed=0)


def run_trainer(strategy: str, epochs: int, limit: int, out: Path) -> tuple[float, float]:
    keep = ("classifier", "pooler") + (
        ("encoder.layer.4.", "encoder.layer.5.") if strategy == "last_k" else ()
    )
    run = run_hf_trainer(
        (DATA / "train.csv", DATA / "test.csv"),
        out,
        epochs=epochs,
        lr=HP["lr"],
        batch_size=HP["batch_size"],
        eval_batch_size=64,
        max_length=HP["max_length"],
        weight_decay=HP["weight_decay"],
        max_grad_norm=HP["max_grad_norm"],
        seed=HP["seed"],
        trainable=None if strategy == "full" else lambda name: any(k in name for k in keep),
        limit=limit,
    )
    return run.train_examples * epochs / run.wall_s, run.accuracy


def run_engine(strategy: str, epochs: int, limit: int, out: Path) -> tuple[float, float]:
    from tunefleet.spec import prepare
    from tunefleet.worker.engine import run_job

    finetune = {"strategy": strategy}
    if strategy == "last_k":
        finetune["k"] = 2
    spec = prepare(
        {
            "name": f"bench-{strategy}",
            "model": {"source": "hf", "name": str(minilm())},
            "data": {
                "source": "csv",
                "train": str(DATA / "train.csv"),
                "eval": str(DATA / "test.csv"),
                "max_length": HP["max_length"],
                "limit_train": limit,
            },
            "finetune": finetune,
            "optimizer": {"name": "adamw", "lr": HP["lr"], "weight_decay": HP["weight_decay"]},
            "schedule": {"name": "linear"},
            "train": {
                "epochs": epochs,
                "batch_size": HP["batch_size"],
                "max_grad_norm": HP["max_grad_norm"],
                "seed": HP["seed"],
                "log_every_steps": 10,
            },
        }
    )
    start = time.perf_counter()
    result = run_job(spec, out, lambda event: None, resume=False)
    wall = time.perf_counter() - start
    n = min(limit, 1600)
    return n * epochs / wall, result.summary.get("eval_accuracy", float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", default="full,last_k,head_only")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--limit-train", type=int, default=1600)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for strategy in args.strategies.split(","):
        speeds = {"trainer": [], "engine": []}
        accs = {"trainer": [], "engine": []}
        for _ in range(args.repeats):
            for tool, fn in (("trainer", run_trainer), ("engine", run_engine)):
                with tempfile.TemporaryDirectory() as tmp:
                    sps, acc = fn(strategy, args.epochs, args.limit_train, Path(tmp))
                speeds[tool].append(sps)
                accs[tool].append(acc)
                print(
                    f"  {strategy:9} {tool:7} {sps:8.1f} samples/s  accuracy {acc:.4f}", flush=True
                )
        t, e = statistics.median(speeds["trainer"]), statistics.median(speeds["engine"])
        rows.append((strategy, t, e, e / t, accs["trainer"][-1], accs["engine"][-1]))
    print(
        f"\n{'strategy':10} {'Trainer s/s':>11} {'engine s/s':>10} {'ratio':>6} "
        f"{'Trainer acc':>11} {'engine acc':>10}"
    )
    for s, t, e, r, ta, ea in rows:
        print(f"{s:10} {t:11.1f} {e:10.1f} {r:6.2f}x {ta:11.4f} {ea:10.4f}")


if __name__ == "__main__":
    main()

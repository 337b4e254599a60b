"""Structured pruning (heads + FFN neurons) of all-MiniLM-L6-v2 vs fp32 and int8, on a CPU.

Fine-tunes MiniLM briefly on examples/data/topics with the engine (the example job's
hyperparameters, --epochs epochs; about 80 s in all on 2 cores), then compresses the result three ways with
compression.compress, as a job would:
    int8                          quantize only
    pruned                        structured, --amount of the heads and FFN neurons per layer
    pruned+N recovery steps       the same, then --recovery-steps steps, then also int8
and measures every model alike: parameters, saved folder size, test accuracy (400 examples)
and CPU latency of one batch of 32 test examples (all models taking turns, median).

    .venv/bin/python bench/structured_pruning.py [--amount 0.5] [--recovery-steps 50]
        [--epochs 2] [--strategy last_k]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hf_baseline import minilm  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "topics"


def job_spec(epochs: int, strategy: str):
    from tunefleet.spec import prepare

    finetune = {"strategy": strategy, "k": 2} if strategy == "last_k" else {"strategy": strategy}
    return prepare(
        {
            "name": "bench-structured-pruning",
            "model": {"source": "hf", "name": str(minilm()), "head": {"dropout": 0.1}},
            "data": {
                "source": "csv",
                "train": str(DATA / "train.csv"),
                "eval": str(DATA / "test.csv"),
                "max_length": 48,
            },
            "finetune": finetune,
            "optimizer": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01},
            "schedule": {"name": "linear", "warmup_ratio": 0.06},
            "train": {"epochs": epochs, "batch_size": 32, "max_grad_norm": 1.0, "seed": 0},
            "resources": {"gpus": 0},
        }
    )


def main() -> None:
    from tunefleet.v1 import spec_pb2
    from tunefleet.worker.engine import forward, load_model, models, run_job
    from tunefleet.worker.engine.compression import _latencies_ms, compress
    from tunefleet.worker.engine.data import load_data
    from tunefleet.worker.engine.evaluation import evaluate_module
    from tunefleet.worker.engine.export import export_model
    from tunefleet.worker.engine.int8 import load_int8
    from tunefleet.worker.engine.recovery import Recovery

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--amount", type=float, default=0.5)
    ap.add_argument("--recovery-steps", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--strategy", default="last_k", help="the fine-tune's finetune.strategy")
    args = ap.parse_args()

    out = Path(tempfile.mkdtemp(prefix="bench-structured-pruning-"))
    spec = job_spec(args.epochs, args.strategy)
    start = time.perf_counter()
    run_job(spec, out / "job", lambda event: None)
    train_s = time.perf_counter() - start

    task = models.resolve_task(spec)
    data = load_data(spec, task)
    meta = json.loads((out / "job" / "model" / "tunefleet_model.json").read_text())
    model = load_model(out / "job" / "model")
    loader = DataLoader(data.eval, batch_size=32, collate_fn=data.collate)
    batch = next(iter(loader))

    def export(module, folder):
        export_model(
            module,
            folder,
            kind="hf",
            arch=meta["arch"],
            labels=meta["labels"],
            head=meta["head"],
            task=meta["task"],
            tokenizer=task.tokenizer,
        )

    def run(name: str, prune: bool, recovery: int, quantize: bool) -> dict:
        c = spec_pb2.CompressionSpec()
        if prune:
            c.prune.amount, c.prune.method = args.amount, "structured"
            c.prune.recovery_steps = recovery
        if quantize:
            c.quantize.method = "dynamic_int8"
        t0 = time.perf_counter()
        result = compress(
            model,
            c,
            kind="hf",
            evaluate=lambda m: evaluate_module(m, loader, "hf", len(meta["labels"])),
            example_batch=batch,
            out_dir=out / name,
            export=export,
            keep=("classifier",),
            recover=Recovery(
                spec=spec,
                train=data.train,
                collate=data.collate,
                kind="hf",
                forward=lambda m, b: forward.logits(m, b, "hf"),
                head_path="classifier",
                epoch=args.epochs - 1,
            ),
        )
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]")
        print(result.report.text)
        saved = json.loads(Path(result.artifacts["compression_report"]).read_text())
        return {"stages": {s["model"]: s for s in saved["stages"]}, "artifacts": result.artifacts}

    int8 = run("int8", prune=False, recovery=0, quantize=True)
    pruned = run("pruned", prune=True, recovery=0, quantize=False)
    recovered = run("recovered", prune=True, recovery=args.recovery_steps, quantize=True)

    rec_label = next(k for k in recovered["stages"] if "recovery" in k)
    rows = [
        ("fp32", int8["stages"]["fp32"], model),
        ("int8", int8["stages"]["int8"], load_int8(int8["artifacts"]["model_int8"])),
        ("pruned", pruned["stages"]["pruned"], load_model(pruned["artifacts"]["model_pruned"])),
        (
            rec_label,
            recovered["stages"][rec_label],
            load_model(recovered["artifacts"]["model_pruned"]),
        ),
        (
            f"{rec_label} + int8",
            recovered["stages"]["pruned+int8"],
            load_int8(recovered["artifacts"]["model_int8"]),
        ),
    ]
    # One interleaved timing of the reloaded models, so that every row shares the same noise.
    latencies = _latencies_ms([m for _, _, m in rows], batch, "hf")
    print(
        f"\nall-MiniLM-L6-v2 fine-tuned on topics ({args.epochs} epoch(s), {args.strategy}, "
        f"{train_s:.0f} s); CPU, {torch.get_num_threads()} threads, batch of "
        f"{len(batch['labels'])}, max_length 48; accuracy on {len(data.eval)} test examples\n"
    )
    print(f"{'model':34} {'params':>11} {'size MB':>8} {'ms/batch':>9} {'speed-up':>9} {'acc':>7}")
    for (label, stage, _), ms in zip(rows, latencies, strict=True):
        print(
            f"{label:34} {stage['params']:>11,} {stage['size_bytes'] / 1e6:>8.1f} {ms:>9.1f} "
            f"{latencies[0] / ms:>8.2f}x {stage['metrics']['accuracy']:>7.4f}"
        )
    print(f"\n(folders under {out})")


if __name__ == "__main__":
    main()

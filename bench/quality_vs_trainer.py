"""Do tunefleet's defaults fine-tune as well as HF Trainer's? Same data, model and shared
hyperparameters; everything else each tool's own default.

The task: 26 Debian archive sections from package descriptions (4,000 train / 2,000 test),
built offline from this machine's apt index by examples/data/make_debian_sections.py. It
does not saturate (all-MiniLM-L6-v2 lands near 0.6-0.7), so a worse default shows.

Shared hyperparameters (both tools): all-MiniLM-L6-v2, max_length 64, batch 32, AdamW,
linear schedule with 8 warmup steps, 3 epochs, gradient clipping 1.0, the same seed. Each
tool's own defaults otherwise: Trainer lr 5e-5 for every parameter, the model's head init
(initializer_range), its dropout, weight_decay 0; tunefleet what
`tunefleet.spec.resolve_defaults` gives (lr 5e-5; a head_only probe at lr 1e-3). Both are scored on the final model (no checkpoint is picked
on the test split).

Rows: full, last_k (k 2: layer 5 + pooler + the new layer), head_only (the new layer), over
seeds 0, 1, 2; a last row `defaults` runs each tool with nothing but model and data (Trainer:
batch 8, no warmup, max_length 512; tunefleet: its own defaults). Target: tunefleet's mean
>= Trainer's in every row.

    .venv/bin/python bench/quality_vs_trainer.py [--strategies full,last_k,head_only,defaults]
        [--seeds 0,1,2] [--data DIR]     (DIR: where train.csv/test.csv are, or get written)
        [--tools trainer,tunefleet] [--precision no|bf16|auto] [--set FIELD=VALUE ...]

`--tools tunefleet` runs tunefleet's side alone (the Trainer's accuracies per seed do not
change between runs on one machine, README has them); `--precision` sets tunefleet's
`train.precision` (unset: its default); `--set model.head.init_std=0.1` sets any field of
tunefleet's job (the value read as YAML), for ablations.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402
from hf_baseline import minilm, run_hf_trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = dict(lr=5e-5, batch_size=32, epochs=3, max_length=64, warmup_steps=8, max_grad_norm=1.0)
# Parameters each strategy trains in the Trainer script (tunefleet's FreezePlan names).
TRAINER_KEEP = {
    "full": None,
    "last_k": ("encoder.layer.5.", "pooler.", "classifier."),
    "head_only": ("classifier.",),
}


def dataset(folder: Path | None) -> Path:
    folder = folder or Path(tempfile.gettempdir()) / "tunefleet-debian-sections"
    if not (folder / "train.csv").is_file():
        script = ROOT / "examples" / "data" / "make_debian_sections.py"
        subprocess.run([sys.executable, str(script), str(folder)], check=True)
    return folder


def run_trainer(strategy: str, seed: int, data: Path, out: Path) -> float:
    keep = TRAINER_KEEP.get(strategy)
    if strategy == "defaults":  # TrainingArguments' own: batch 8, no warmup, 512 tokens
        hp = dict(batch_size=8, warmup_steps=0, max_length=512)
    else:
        hp = dict(SHARED)
    run = run_hf_trainer(
        (data / "train.csv", data / "test.csv"),
        out,
        epochs=SHARED["epochs"],
        lr=SHARED["lr"],
        batch_size=hp["batch_size"],
        eval_batch_size=64,
        max_length=hp["max_length"],
        weight_decay=0.0,
        max_grad_norm=SHARED["max_grad_norm"],
        seed=seed,
        trainable=None if keep is None else lambda name: any(k in name for k in keep),
        logging_steps=50,
        head_init_std=None,
        warmup_steps=hp["warmup_steps"],
    )
    return run.accuracy


def run_engine(
    strategy: str, seed: int, data: Path, out: Path, precision: str = "", sets: tuple = ()
) -> float:
    from tunefleet.spec import prepare
    from tunefleet.worker.engine import run_job

    job: dict = {
        "name": f"quality-{strategy}",
        "model": {"source": "hf", "name": str(minilm())},
        "data": {"source": "csv", "train": str(data / "train.csv"), "eval": str(data / "test.csv")},
        "train": {"seed": seed, "log_every_steps": 50},
    }
    if precision:
        job["train"]["precision"] = precision
    for field, value in sets:
        *parents, leaf = field.split(".")
        node = job
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    if strategy != "defaults":
        # The shared hyperparameters, stated: tunefleet's own defaults differ for some
        # (batch 8 for HF models since 2026-12-07).
        job["train"]["batch_size"] = SHARED["batch_size"]
        job["train"]["epochs"] = SHARED["epochs"]
        job["data"]["max_length"] = SHARED["max_length"]
        job["schedule"] = {"warmup_steps": SHARED["warmup_steps"]}
        job["finetune"] = {"strategy": strategy, **({"k": 2} if strategy == "last_k" else {})}
    events: list = []
    run_job(prepare(job), out, events.append, resume=False)
    evals = [
        e.metrics.values["accuracy"]
        for e in events
        if e.WhichOneof("kind") == "metrics" and e.metrics.phase == "eval"
    ]
    return evals[-1]  # the final model's, as the Trainer's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", default="full,last_k,head_only,defaults")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--tools", default="trainer,tunefleet")
    ap.add_argument("--precision", default="")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = ap.parse_args()
    tools = args.tools.split(",")
    sets = tuple((k, yaml.safe_load(v)) for k, v in (a.split("=", 1) for a in args.set))
    engine = functools.partial(run_engine, precision=args.precision, sets=sets)
    torch.set_num_threads(os.cpu_count() or 1)
    data = dataset(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for strategy in args.strategies.split(","):
        accs: dict[str, list[float]] = {"trainer": [], "tunefleet": []}
        for seed in seeds:
            for tool, fn in (("trainer", run_trainer), ("tunefleet", engine)):
                if tool not in tools:
                    continue
                start = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    acc = fn(strategy, seed, data, Path(tmp))
                accs[tool].append(acc)
                wall = time.perf_counter() - start
                print(
                    f"  {strategy:9} seed {seed} {tool:9} accuracy {acc:.4f}  ({wall:.0f} s)",
                    flush=True,
                )
        t, e = (statistics.mean(accs[k]) if accs[k] else float("nan") for k in accs)
        rows.append((strategy, accs["trainer"], accs["tunefleet"], t, e))
    print(
        f"\n{'strategy':10} {'Trainer (per seed)':>26} {'tunefleet (per seed)':>26} "
        f"{'Trainer':>8} {'tunefleet':>9} {'diff':>7}"
    )
    for s, ta, ea, t, e in rows:
        per = lambda xs: " ".join(f"{x:.4f}" for x in xs)  # noqa: E731
        verdict = "ok" if e >= t else "LOSES"
        print(f"{s:10} {per(ta):>26} {per(ea):>26} {t:8.4f} {e:9.4f} {e - t:+7.4f} {verdict}")


if __name__ == "__main__":
    main()

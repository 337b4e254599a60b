"""Classification metrics (loss, accuracy, macro F1): the trainer's evaluation over all
processes (`evaluate_prepared`) and plain single-process evaluation (`evaluate_module`).

Both report their progress (examples done of the split) through a progress.py tracker when
given one, so a follower's bar moves during a long evaluation; the per-example loss is the
mean cross-entropy in every caller (training's validation, the test set, compression rows),
so their losses compare.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from tunefleet.worker.engine.forward import logits as model_logits


def classification_metrics(
    losses: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor, num_labels: int
) -> dict[str, float]:
    """loss, accuracy, macro_f1 (over the classes present in labels or predictions)."""
    k = max(num_labels, int(labels.max()) + 1, int(preds.max()) + 1)
    confusion = torch.bincount(labels * k + preds, minlength=k * k).reshape(k, k).double()
    tp = confusion.diag()
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    f1 = (2 * tp / (2 * tp + fp + fn).clamp(min=1))[present]
    return {
        "loss": losses.double().mean().item(),
        "accuracy": (preds == labels).double().mean().item(),
        "macro_f1": f1.mean().item() if f1.numel() else 0.0,
    }


def evaluate_prepared(
    accelerator: Any,
    loader: Any,
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    num_labels: int,
    *,
    progress: Any = None,
) -> dict[str, float]:
    """The trainer's validation pass: `forward(batch)` gives logits (through the feature
    cache when it holds the batch), every process evaluates its shard, and the metrics are
    computed on all of them gathered. The caller sets eval mode and restores train mode."""
    losses, preds, labels = [], [], []
    with torch.no_grad():
        for batch in loader:
            if progress is not None:
                progress.advance(len(batch["labels"]) * accelerator.num_processes)
            logits = forward(batch).float()
            loss = F.cross_entropy(logits, batch["labels"], reduction="none")
            loss, pred, label = accelerator.gather_for_metrics(
                (loss, logits.argmax(-1), batch["labels"])
            )
            losses.append(loss.cpu())
            preds.append(pred.cpu())
            labels.append(label.cpu())
    if progress is not None:
        progress.finish()
    return classification_metrics(
        torch.cat(losses), torch.cat(preds), torch.cat(labels), num_labels
    )


def evaluate_module(
    module: nn.Module,
    loader: DataLoader,
    kind: str,
    num_labels: int,
    *,
    device=None,
    progress: Any = None,
) -> dict[str, float]:
    """Plain single-process evaluation, on CPU unless `device` is given (compression
    evaluates modified copies; the test set is evaluated once at the end). `progress`: a
    progress.py tracker (examples), or a callable given the share of batches done."""
    module.eval()
    losses, preds, labels = [], [], []
    n_batches = len(loader) if hasattr(loader, "__len__") else 0
    with torch.no_grad():
        for i, batch in enumerate(loader, 1):
            if device is not None:
                batch = {k: v.to(device) for k, v in batch.items()}
            logits = model_logits(module, batch, kind).float()
            losses.append(F.cross_entropy(logits, batch["labels"], reduction="none"))
            preds.append(logits.argmax(-1))
            labels.append(batch["labels"])
            if callable(progress):
                progress(i / n_batches if n_batches else 0.0)
            elif progress is not None:
                progress.advance(len(batch["labels"]))
    if progress is not None and not callable(progress):
        progress.finish()
    return classification_metrics(
        torch.cat(losses), torch.cat(preds), torch.cat(labels), num_labels
    )


def evaluate_dataset(
    accelerator, module: nn.Module, dataset, data, bundle, *, batch_size: int, progress=None
) -> dict[str, float]:
    """One split (the test set), in order, on the main process: `evaluate_module` over a
    plain loader of `dataset`, with the data's own collate and the run's precision."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=data.collate,
        num_workers=data.num_workers,
    )
    with accelerator.autocast():
        return evaluate_module(
            module, loader, bundle.kind, bundle.num_labels,
            device=accelerator.device, progress=progress,
        )  # fmt: skip

"""Classification metrics (loss, accuracy, macro F1) and plain single-process evaluation."""

from __future__ import annotations

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


def evaluate_module(
    module: nn.Module, loader: DataLoader, kind: str, num_labels: int, *, device=None
) -> dict[str, float]:
    """Plain single-process evaluation, on CPU unless `device` is given (compression
    evaluates modified copies; the test set is evaluated once at the end)."""
    module.eval()
    losses, preds, labels = [], [], []
    with torch.no_grad():
        for batch in loader:
            if device is not None:
                batch = {k: v.to(device) for k, v in batch.items()}
            logits = model_logits(module, batch, kind).float()
            losses.append(F.cross_entropy(logits, batch["labels"], reduction="none"))
            preds.append(logits.argmax(-1))
            labels.append(batch["labels"])
    return classification_metrics(
        torch.cat(losses), torch.cat(preds), torch.cat(labels), num_labels
    )

"""The forward pass of a classifier on an input batch: ``(model, batch, kind) -> logits``.

One definition for training, evaluation, the feature cache's prefix pass, compression and
pruning recovery. A batch holds ``input_ids`` / ``attention_mask`` / ``token_type_ids`` (text,
Hugging Face models) or ``pixel_values`` (images), and ``labels``.
"""

from __future__ import annotations

import torch
from torch import nn

HF_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def logits(model: nn.Module, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """The model's logits for an input batch; ``kind`` is "hf" or "torchvision"."""
    if kind == "hf":
        return model(**{k: batch[k] for k in HF_INPUTS if k in batch}).logits
    return model(batch["pixel_values"])

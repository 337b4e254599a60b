"""`DataBundle`: what `load_data` returns (datasets, collate, label names)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class DataBundle:
    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset | None
    collate: Callable
    label_names: list[str]
    num_labels: int
    num_workers: int = 0  # data.num_workers, for the trainer's DataLoaders
    test: torch.utils.data.Dataset | None = None  # evaluated once, after training
    notes: list[str] = field(default_factory=list)  # for the job's log (where validation is from)

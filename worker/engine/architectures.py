"""What both building a model (models.py) and loading an exported one (export.py) need: the
model folder's metadata file, tunefleet's own small CNN, torchvision architectures by name, and
a quiet transformers.

Kept apart from models.py so that export.py, which models.py uses to start from an earlier
job's model, does not import models.py back.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunefleet.worker.engine.errors import InvalidJobInput

META_FILE = "tunefleet_model.json"


class SmallCNN(nn.Module):
    """A small CNN for 28x28 (1 channel) or 32x32 (3 channel) images.

    Named stages (stem, stage1, stage2, head) are the blocks the freeze plan works with.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()

        def block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return nn.Sequential(*layers)

        self.stem = block(in_channels, width, pool=False)
        self.stage1 = block(width, 2 * width, pool=True)
        self.stage2 = block(2 * width, 4 * width, pool=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head: nn.Module = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.head(torch.flatten(self.pool(x), 1))


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise InvalidJobInput(
            f"model.name: {folder} is not a tunefleet model folder (no {META_FILE})"
        )
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence load reports and progress bars: the engine reports head replacement itself."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def build_torchvision_arch(
    arch: str,
    *,
    in_channels: int = 3,
    weights: str | None = None,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """`options`: the builder arguments an exported model recorded (`arch_options`)."""
    if arch == "smallcnn":
        return SmallCNN(num_classes=10, in_channels=in_channels)
    import torchvision

    if arch not in torchvision.models.list_models():
        raise InvalidJobInput(f"model.name: unknown torchvision architecture {arch!r}")
    return torchvision.models.get_model(arch, weights=weights or None, **(options or {}))


def arch_options(model: nn.Module) -> dict[str, Any]:
    """What shapes a torchvision model beyond its name, for rebuilding it without its
    weights: a ViT's image_size (its position embeddings), which weights may set
    (vit_b_16 IMAGENET1K_SWAG_E2E_V1: 384; rebuilt at the default 224, it cannot load)."""
    size = getattr(model, "image_size", None)
    return {"image_size": size} if isinstance(size, int) and not isinstance(size, bool) else {}

"""How many freezable body blocks a model has, found without importing torch.

`last_k` is validated before a job is queued, so the count must come from cheap metadata
(a local config.json, or a fixed table for torchvision). The engine's FreezePlan uses the
same block definition: embeddings/stem, then one block per layer/stage; the head is extra.
"""

from __future__ import annotations

import json
from pathlib import Path

# Counted by the engine's FreezePlan on each architecture (tests/engine/test_architectures.py
# checks every entry against the real model).
_TORCHVISION_BLOCKS = {
    "smallcnn": 3,  # stem, stage1, stage2
    **{f"resnet{n}": 5 for n in (18, 34, 50, 101, 152)},  # stem, layer1..layer4
    # features.<i>: one block per conv layer (with its BatchNorm in the _bn variants)
    "alexnet": 5,
    **{f"vgg{n}{bn}": c for n, c in ((11, 8), (13, 10), (16, 13), (19, 16)) for bn in ("", "_bn")},
    # features.<i>: one block per stage
    "mobilenet_v2": 19,
    "mobilenet_v3_small": 13,
    "mobilenet_v3_large": 17,
    **{f"efficientnet_b{i}": 9 for i in range(8)},
    # stem (patch embedding, class token, positions), then one block per encoder layer
    "vit_b_16": 13,
    "vit_b_32": 13,
    "vit_l_16": 25,
}

_LAYER_KEYS = ("num_hidden_layers", "n_layers", "num_layers")


def hf_layer_count(folder: Path) -> int | None:
    cfg = folder / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    for key in _LAYER_KEYS:
        if isinstance(data.get(key), int):
            return data[key]
    return None


def body_block_count(source: str, name: str) -> int | None:
    """Blocks below the head, or None when it cannot be known before loading the model."""
    if source == "torchvision":
        return _TORCHVISION_BLOCKS.get(name)
    if source == "hf":
        folder = Path(name)
        if folder.is_dir():
            layers = hf_layer_count(folder)
            return None if layers is None else layers + 1  # + embeddings
    return None

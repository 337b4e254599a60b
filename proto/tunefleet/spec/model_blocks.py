"""How many freezable body blocks a model has, found without importing torch.

`last_k` is validated before a job is queued, so the count must come from cheap metadata
(a local config.json, or a fixed table for torchvision). The engine's FreezePlan uses the
same block definition: embeddings/stem, then one block per layer/stage, then the pretrained
layers between the body and the output layer (BERT's pooler, AlexNet's fc6 and fc7); the head
-- the new output layer alone -- is extra.
"""

from __future__ import annotations

from pathlib import Path

from tunefleet.spec.model_config import read_config

# Counted by the engine's FreezePlan on each architecture (tests/engine/test_architectures.py
# checks every entry against the real model).
_TORCHVISION_BLOCKS = {
    "smallcnn": 3,  # stem, stage1, stage2
    **{f"resnet{n}": 5 for n in (18, 34, 50, 101, 152)},  # stem, layer1..layer4
    # features.<i>: one block per conv layer (with its BatchNorm in the _bn variants), then
    # the classifier's two hidden layers fc6 (classifier.1) and fc7 (classifier.4)
    "alexnet": 5 + 2,
    **{
        f"vgg{n}{bn}": c + 2
        for n, c in ((11, 8), (13, 10), (16, 13), (19, 16))
        for bn in ("", "_bn")
    },
    # features.<i>: one block per stage (mobilenet_v3: then its hidden classifier.0)
    "mobilenet_v2": 19,
    "mobilenet_v3_small": 13 + 1,
    "mobilenet_v3_large": 17 + 1,
    **{f"efficientnet_b{i}": 9 for i in range(8)},
    # stem (patch embedding, class token, positions), then one block per encoder layer
    "vit_b_16": 13,
    "vit_b_32": 13,
    "vit_l_16": 25,
}

_LAYER_KEYS = ("num_hidden_layers", "n_layers", "num_layers")
# Hugging Face families whose blocks are embeddings + one per layer + one pretrained layer
# between the encoder and the output layer (bert: pooler; distilbert: pre_classifier;
# roberta-likes: classifier.dense; deberta-v2: pooler.dense). Others are counted when the model is loaded.
_HF_TOP_LAYERS = {
    "bert": 1,
    "distilbert": 1,
    "roberta": 1,
    "xlm-roberta": 1,
    "camembert": 1,
    "electra": 1,
    "mpnet": 1,
    "deberta-v2": 1,  # pooler.dense
}


def hf_layer_count(folder: Path) -> int | None:
    data = read_config(folder)
    for key in _LAYER_KEYS:
        if isinstance(data.get(key), int):
            return data[key]
    return None


def hf_body_block_count(folder: Path) -> int | None:
    """embeddings + layers + the family's pretrained top layers, or None for other families."""
    top = _HF_TOP_LAYERS.get(str(read_config(folder).get("model_type", "")))
    layers = hf_layer_count(folder)
    if top is None or layers is None:
        return None
    return 1 + layers + top


def body_block_count(source: str, name: str) -> int | None:
    """Blocks below the head, or None when it cannot be known before loading the model."""
    if source == "torchvision":
        return _TORCHVISION_BLOCKS.get(name)
    if source == "hf":
        folder = Path(name)
        if folder.is_dir():
            return hf_body_block_count(folder)
    return None

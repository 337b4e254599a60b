"""The final model folder (``out_dir/model``) and `load_model`, its one-line loader.

hf:           save_pretrained + tokenizer (AutoModelForSequenceClassification / AutoTokenizer
              load it directly; id2label carries the label names) + tunefleet_model.json;
              a structurally pruned model (config.pruned_heads) needs `load_model`
              (encoder_pruning.py says why)
torchvision:  model.safetensors + tunefleet_model.json (arch, head, labels, input format)

tunefleet_model.json: {"kind", "arch", "num_labels", "labels", "head", "task", "spec",
"arch_options"} (torchvision builder arguments, e.g. a ViT's image_size).
The folder is written under a temporary name and renamed, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from tunefleet.worker.engine.architectures import (
    META_FILE,
    arch_options,
    build_torchvision_arch,
    quiet_transformers,
    read_meta,
)
from tunefleet.worker.engine.encoder_pruning import restore_pruned_heads
from tunefleet.worker.engine.heads import replace_hf_head, replace_torchvision_head


def _save_tokenizer(tokenizer: Any, folder: Path, max_length: int | None) -> None:
    """Saved with the length the job's examples were cut at as its model_max_length:
    `truncation=True` at inference then cuts where training and evaluation did, also when
    the source tokenizer's own limit is unset (a huge sentinel) and only the model's
    position count bounded the job."""
    limit = tokenizer.model_max_length
    if max_length:
        tokenizer.model_max_length = int(max_length)
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = limit


def export_model(
    model: nn.Module,
    folder: str | Path,
    *,
    kind: str,
    arch: str,
    labels: list[str],
    head: dict[str, Any],
    task: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
    tokenizer: Any = None,
    max_length: int = 0,
) -> Path:
    """Write ``model`` (unwrapped) as a self-describing folder; returns the folder.

    ``max_length``: the tokens a text example was cut at (`Task.truncation`); 0 takes the
    spec's data.max_length."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if kind == "hf":
        with quiet_transformers():
            model.save_pretrained(tmp)
            if tokenizer is not None:
                limit = max_length or (spec or {}).get("data", {}).get("max_length")
                _save_tokenizer(tokenizer, tmp, limit)
    else:
        from safetensors.torch import save_model

        save_model(model, str(tmp / "model.safetensors"))
    meta = {
        "kind": kind,
        "arch": arch,
        "num_labels": len(labels),
        "labels": list(labels),
        "head": dict(head),
        "task": dict(task or {}),
        "spec": spec or {},
        "arch_options": {} if kind == "hf" else arch_options(model),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


def load_model(folder: str | Path) -> nn.Module:
    """A ready-to-use classifier (eval mode) from an exported tunefleet model folder.

    >>> model = load_model("runs/job-1/model")
    >>> logits = model(pixel_values)            # torchvision
    >>> logits = model(**tokens).logits          # hf
    """
    folder = Path(folder)
    meta = read_meta(folder)
    if meta["kind"] == "hf":
        model = _load_hf_folder(folder, meta)
    else:
        from safetensors.torch import load_model as load_weights

        in_channels = meta.get("task", {}).get("in_channels", 3) or 3
        model = build_torchvision_arch(
            meta["arch"], in_channels=in_channels, options=meta.get("arch_options")
        )
        model, _ = replace_torchvision_head(model, meta["num_labels"], meta["head"])
        load_weights(model, str(folder / "model.safetensors"))
    return model.eval()


def _load_hf_folder(folder: Path, meta: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    with quiet_transformers():
        config = AutoConfig.from_pretrained(folder)
        pruned_heads = getattr(config, "pruned_heads", None)
        if not meta["head"].get("hidden") and not pruned_heads:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                folder, output_loading_info=True
            )
            if not info["missing_keys"] and not info["unexpected_keys"]:
                return model
            # else a head from_pretrained would have drawn at random: rebuilt below.
        # Not something from_pretrained rebuilds: a head unlike the model's own classifier
        # (a hidden layer; a Dropout of its own, for a model without one in front of it and
        # a head.dropout; a bias where the model's had none, e.g. CTRL), or attention
        # narrowed by structured pruning (transformers 5 dropped config.pruned_heads). The
        # head is rebuilt as the trainer built it.
        from safetensors.torch import load_file

        model = AutoModelForSequenceClassification.from_config(config)
        restore_pruned_heads(model)
        model, _ = replace_hf_head(model, meta["num_labels"], meta["labels"], meta["head"])
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model

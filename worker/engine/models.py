"""Building the model a job fine-tunes, with a new classification head.

Three sources (``model.source``):
- ``hf``: AutoModelForSequenceClassification from a hub id or local folder, plus its tokenizer.
- ``torchvision``: an architecture from torchvision.models (optionally with pretrained weights or
  a local safetensors checkpoint), or ``smallcnn``, tunefleet's own CNN for 28/32 px images.
- ``job``: the exported model folder of an earlier tunefleet job (it has tunefleet_model.json).

Whatever the source, the classifier is always replaced by a freshly initialised head sized for
this job's labels: the pretrained body is what we transfer, the old head is task-specific.
``model.init: random`` keeps the architecture (and tokenizer) but not the weights: the
baseline that transfer learning is measured against. ``finetune.strategy: lora`` injects PEFT
LoRA adapters into the body (lora.py); the export folds them back in.

Data loading needs to know the model's input format (tokenizer, image size, normalisation)
before the number of labels is known, so `resolve_task` runs first and `build_model` second.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunefleet.spec.model_config import max_positions
from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.architectures import (
    build_torchvision_arch,
    quiet_transformers,
    read_meta,
)
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.export import load_model
from tunefleet.worker.engine.heads import (
    describe_init,
    find_torchvision_head,
    head_dict,
    replace_hf_head,
    replace_torchvision_head,
)
from tunefleet.worker.engine.lora import apply_lora, describe_lora
from tunefleet.worker.engine.model_sources import local_copy, unreachable_hint
from tunefleet.worker.engine.task import IMAGENET_MEAN, IMAGENET_STD, Task

# Per-dataset normalisation for the small CNN (computed on the training sets).
TEXT_LIMIT_CAP = 512  # data.max_length 0: the model's limit, at most this
_SMALL_DATASETS = {
    "fashionmnist": (28, 1, (0.2860,), (0.3530,)),
    "mnist": (28, 1, (0.1307,), (0.3081,)),
    "kmnist": (28, 1, (0.1918,), (0.3483,)),
    "emnist": (28, 1, (0.1736,), (0.3317,)),
    "cifar10": (32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": (32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class ModelBundle:
    model: nn.Module
    kind: str  # "hf" | "torchvision" (smallcnn counts as torchvision)
    arch: str  # hub id / folder for hf, architecture name for torchvision
    task: Task
    num_labels: int
    labels: list[str]
    head: dict[str, Any]  # the HeadSpec that built the head, as plain values
    head_path: str  # dotted module path of the new head, e.g. "classifier" or "fc"
    tokenizer: Any = None
    notes: list[str] = field(default_factory=list)  # things worth a log event
    lora_targets: list[str] = field(default_factory=list)  # modules with LoRA adapters


# ----------------------------------------------------------------------------- task


def _load_tokenizer(name: str, revision: str | None, source: str) -> Any:
    """The tokenizer of ``model.name`` from `source`, its local_copy."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision or None)
    except (OSError, ValueError) as e:
        why = unreachable_hint(name, e) or str(e)
        raise InvalidJobInput(f"model.name: cannot load a tokenizer from {name!r}: {why}") from e
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-style models: batches need padding
    return tokenizer


def text_limit(tokenizer: Any, folder: str) -> int:
    """The tokens a text example keeps when data.max_length is 0 (its default): the
    model's own limit, as a Trainer script's `tokenizer(text, truncation=True)` gets it
    (the tokenizer's model_max_length, and the positions in a local config.json), at most
    TEXT_LIMIT_CAP: past 512 tokens attention's cost grows with the square of the length,
    a long-context model's 8,192 is for users who ask for it."""
    limit = TEXT_LIMIT_CAP
    said = getattr(tokenizer, "model_max_length", None)
    if isinstance(said, int) and 0 < said < 1_000_000:  # unset: a huge sentinel
        limit = min(limit, said)
    positions = max_positions(folder)
    if positions is not None:
        limit = min(limit, positions)
    return limit


def model_kind(spec: spec_pb2.JobSpec) -> tuple[str, str]:
    """(kind, arch): kind is "hf" or "torchvision"; for source job, read from the folder."""
    source = spec.model.source
    if source == "job":
        meta = read_meta(spec.model.name)
        return meta["kind"], meta["arch"]
    if source in ("hf", "torchvision"):
        return source, spec.model.name
    raise InvalidJobInput(f"model.source: unknown source {source!r} (hf | torchvision | job)")


def resolve_task(spec: spec_pb2.JobSpec) -> Task:
    """The input format of the model: tokenizer (text) or image size/normalisation (images).

    `data.mean`/`data.std`, when given, replace the model's normalisation; the exported
    model records them, so inference and chained jobs normalise the same way."""
    task = _model_task(spec)
    if task.kind == "image" and spec.data.mean:
        task = replace(task, mean=tuple(spec.data.mean), std=tuple(spec.data.std))
    return task


def _model_task(spec: spec_pb2.JobSpec) -> Task:
    kind, arch = model_kind(spec)
    if kind == "hf":
        name = spec.model.name
        revision = spec.model.revision if spec.model.source == "hf" else None
        source, _ = local_copy(name, revision)
        tokenizer = _load_tokenizer(name, revision, source)
        return Task.text(tokenizer, text_limit(tokenizer, source))

    data_size = spec.data.image_size if spec.data.HasField("image_size") else 0
    if spec.model.source == "job":
        saved = read_meta(spec.model.name).get("task", {})
        return Task(
            kind="image",
            image_size=data_size or saved.get("image_size", 224),
            mean=tuple(saved.get("mean", IMAGENET_MEAN)),
            std=tuple(saved.get("std", IMAGENET_STD)),
            in_channels=saved.get("in_channels", 3),
        )
    if arch == "smallcnn":
        dataset = spec.data.name.lower() if spec.data.source == "torchvision" else ""
        size, channels, mean, std = _SMALL_DATASETS.get(
            dataset, (32, 3, IMAGENET_MEAN, IMAGENET_STD)
        )
        return Task("image", None, data_size or size, mean, std, channels)
    if spec.model.weights:
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(arch)[spec.model.weights]
        except (KeyError, ValueError) as e:
            raise InvalidJobInput(
                f"model.weights: {spec.model.weights!r} is not a weights name of {arch!r}"
            ) from e
        transforms = weights.transforms()
        size = transforms.crop_size[0] if hasattr(transforms, "crop_size") else 224
        mean = tuple(getattr(transforms, "mean", IMAGENET_MEAN))
        std = tuple(getattr(transforms, "std", IMAGENET_STD))
        return Task("image", None, data_size or size, mean, std, 3)
    return Task("image", None, data_size or 224, IMAGENET_MEAN, IMAGENET_STD, 3)


def resolve_labels(
    spec: spec_pb2.JobSpec,
    data_num_labels: int | None = None,
    data_label_names: list[str] | None = None,
) -> tuple[int, list[str]]:
    """num_labels from model.num_labels, else model.labels, else the data; names to match."""
    names = list(spec.model.labels) or list(data_label_names or [])
    if spec.model.HasField("num_labels") and spec.model.num_labels > 0:
        n = spec.model.num_labels
    elif spec.model.labels:
        n = len(spec.model.labels)
    elif data_num_labels:
        n = data_num_labels
    else:
        raise InvalidJobInput(
            "model.num_labels: not given and the data does not say how many labels"
        )
    if len(names) != n:
        names = names[:n] + [f"LABEL_{i}" for i in range(len(names), n)]
    return n, names


# ----------------------------------------------------------------------------- models


def build_model(
    spec: spec_pb2.JobSpec, task: Task, num_labels: int, labels: list[str]
) -> ModelBundle:
    """Load/build the body named by spec.model and attach a new head for ``num_labels``."""
    kind, arch = model_kind(spec)
    head = head_dict(spec.model.head, spec.finetune.strategy)
    random_init = spec.model.init == "random"
    notes: list[str] = []
    if kind == "hf":
        revision = spec.model.revision if spec.model.source == "hf" else None
        model = _load_hf(spec.model.name, revision, random_init=random_init)
        notes.append(local_copy(spec.model.name, revision)[1] or "")
        model, head_path = replace_hf_head(model, num_labels, labels, head)
        pad_id = getattr(task.tokenizer, "pad_token_id", None)
        if getattr(model.config, "pad_token_id", None) is None and pad_id is not None:
            model.config.pad_token_id = pad_id  # decoder models find the last token by it
    else:
        if spec.model.source == "job" and random_init:
            options = read_meta(spec.model.name).get("arch_options")
            model = build_torchvision_arch(arch, in_channels=task.in_channels or 3, options=options)
        elif spec.model.source == "job":
            model = load_model(spec.model.name)
            model.train()
        else:
            model = _load_torchvision(spec, arch, task)
        model, head_path = replace_torchvision_head(model, num_labels, head)
    if random_init:
        notes.append("model.init random: the body's weights are randomly initialised")
    notes.append(
        f"new head at `{head_path}`: {num_labels} labels"
        + (f", hidden {head['hidden']}" if head["hidden"] else "")
        + f", {describe_init(head, model, kind)}"
        + (f", dropout {head['dropout']:g}" if head["dropout"] is not None else "")
    )
    notes = [note for note in notes if note]
    lora_targets: list[str] = []
    if spec.finetune.strategy == "lora":
        lora_targets = apply_lora(model, kind, head_path, spec.finetune.lora)
        notes.append(describe_lora(model, lora_targets, spec.finetune.lora))
    return ModelBundle(
        model=model,
        kind=kind,
        arch=arch,
        task=task,
        num_labels=num_labels,
        labels=labels,
        head=head,
        head_path=head_path,
        tokenizer=task.tokenizer,
        notes=notes,
        lora_targets=lora_targets,
    )


def _load_hf(name: str, revision: str | None, *, random_init: bool = False) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    source, _ = local_copy(name, revision)
    # fp32 weights whatever dtype the model was saved in (transformers 5 keeps a config's
    # bfloat16/float16): train.precision decides the compute, and the new head is fp32.
    dtype = torch.float32
    try:
        with quiet_transformers():
            if random_init:  # same architecture, fresh weights (from the global torch RNG)
                config = AutoConfig.from_pretrained(source, revision=revision or None)
                return AutoModelForSequenceClassification.from_config(config, dtype=dtype)
            # ignore_mismatched_sizes: the checkpoint's own head may have another label count;
            # it is replaced right after, so a size mismatch there is expected.
            model = AutoModelForSequenceClassification.from_pretrained(
                source, revision=revision or None, ignore_mismatched_sizes=True, dtype=dtype
            )
            if getattr(model.config, "pruned_heads", None):
                # ...but here it would have re-initialised the narrowed attention layers.
                raise InvalidJobInput(
                    f"model.name: {name!r} had attention heads removed by structured pruning "
                    "(config.pruned_heads), which transformers 5 cannot load for training; "
                    "start from the unpruned model"
                )
            return model
    except pickle.UnpicklingError as e:
        # transformers reads .bin weights with torch.load(weights_only=True): a pickle that
        # would run code is refused, and retrying cannot change that.
        raise InvalidJobInput(
            f"model.name: refused to load {name!r}: its weights file is a pickle holding more "
            f"than tensors ({_first_line(e)}); use safetensors weights"
        ) from None
    except (OSError, ValueError) as e:
        why = unreachable_hint(name, e) or str(e)
        raise InvalidJobInput(
            f"model.name: cannot load {name!r} as a Hugging Face model: {why}"
        ) from e


def _first_line(e: Exception) -> str:
    """torch's weights-only refusal, without its paragraph of advice."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    why = [line for line in lines if "unsupported" in line.lower()]
    return (why or lines or [type(e).__name__])[0][:300]


def _load_torchvision(spec: spec_pb2.JobSpec, arch: str, task: Task) -> nn.Module:
    if spec.model.init == "random":
        return build_torchvision_arch(
            arch, in_channels=task.in_channels, options=_random_vit_options(arch, task)
        )
    try:
        model = build_torchvision_arch(
            arch, in_channels=task.in_channels, weights=spec.model.weights
        )
    except InvalidJobInput:
        raise
    except Exception as e:  # downloads: no internet, hub outage
        raise RuntimeError(
            f"model.weights: could not get {arch} weights {spec.model.weights!r}: {e}"
        ) from e
    if spec.model.checkpoint:
        _load_checkpoint_into(model, Path(spec.model.checkpoint))
    return model


def _random_vit_options(arch: str, task: Task) -> dict | None:
    """A ViT without weights is built for the job's images (data.image_size): its default
    224 would refuse any other size at the first step (a crash, retried for nothing)."""
    if not arch.startswith("vit_") or not task.image_size or task.image_size == 224:
        return None
    patch = int(arch.rsplit("_", 1)[1])
    if task.image_size % patch:
        raise InvalidJobInput(
            f"data.image_size: {arch} cuts images into {patch}x{patch} patches; use a "
            f"multiple of {patch} (e.g. {max(patch, task.image_size // patch * patch)})"
        )
    return {"image_size": task.image_size}


def _load_checkpoint_into(model: nn.Module, path: Path) -> None:
    """Load a safetensors state dict; the old head may differ in size (it is replaced anyway)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise InvalidJobInput(f"model.checkpoint: {path} does not exist")
    try:
        state = load_file(str(path))
    except Exception as e:
        raise InvalidJobInput(f"model.checkpoint: {path} is not a safetensors file: {e}") from e
    head_path, _ = find_torchvision_head(model)
    own = model.state_dict()
    for key in list(state):
        if key.startswith(head_path + ".") and key in own and own[key].shape != state[key].shape:
            del state[key]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches, e.g. 3-channel weights for 1-channel data
        raise InvalidJobInput(
            f"model.checkpoint: {path} does not fit {type(model).__name__}: {e}"
        ) from e
    missing = [k for k in missing if not k.startswith(head_path + ".")]
    if missing or unexpected:
        raise InvalidJobInput(
            f"model.checkpoint: {path} does not fit {type(model).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )

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
LoRA adapters into the body (`apply_lora`); the export folds them back in (`merge_lora`).

Data loading needs to know the model's input format (tokenizer, image size, normalisation)
before the number of labels is known, so `resolve_task` runs first and `build_model` second.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.heads import (
    describe_init,
    find_torchvision_head,
    head_dict,
    replace_hf_head,
    replace_torchvision_head,
)

META_FILE = "tunefleet_model.json"


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-dataset normalisation for the small CNN (computed on the training sets).
_SMALL_DATASETS = {
    "fashionmnist": (28, 1, (0.2860,), (0.3530,)),
    "mnist": (28, 1, (0.1307,), (0.3081,)),
    "kmnist": (28, 1, (0.1918,), (0.3483,)),
    "emnist": (28, 1, (0.1736,), (0.3317,)),
    "cifar10": (32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": (32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True)
class TaskInfo:
    """What the data pipeline needs from the model: the fields of data.Task."""

    kind: str  # "text" | "image"
    tokenizer: Any = None
    image_size: int = 0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    in_channels: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, without the tokenizer (saved next to the model instead)."""
        return {
            "kind": self.kind,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "in_channels": self.in_channels,
        }


@dataclass
class ModelBundle:
    model: nn.Module
    kind: str  # "hf" | "torchvision" (smallcnn counts as torchvision)
    arch: str  # hub id / folder for hf, architecture name for torchvision
    task: TaskInfo
    num_labels: int
    labels: list[str]
    head: dict[str, Any]  # the HeadSpec that built the head, as plain values
    head_path: str  # dotted module path of the new head, e.g. "classifier" or "fc"
    tokenizer: Any = None
    notes: list[str] = field(default_factory=list)  # things worth a log event
    lora_targets: list[str] = field(default_factory=list)  # modules with LoRA adapters


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


# ----------------------------------------------------------------------------- task


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


def _load_tokenizer(name: str, revision: str | None) -> Any:
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(name, revision=revision or None)
    except (OSError, ValueError) as e:
        raise InvalidJobInput(f"model.name: cannot load a tokenizer from {name!r}: {e}") from e
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-style models: batches need padding
    return tokenizer


def model_kind(spec: spec_pb2.JobSpec) -> tuple[str, str]:
    """(kind, arch): kind is "hf" or "torchvision"; for source job, read from the folder."""
    source = spec.model.source
    if source == "job":
        meta = read_meta(spec.model.name)
        return meta["kind"], meta["arch"]
    if source in ("hf", "torchvision"):
        return source, spec.model.name
    raise InvalidJobInput(f"model.source: unknown source {source!r} (hf | torchvision | job)")


def resolve_task(spec: spec_pb2.JobSpec) -> TaskInfo:
    """The input format of the model: tokenizer (text) or image size/normalisation (images).

    `data.mean`/`data.std`, when given, replace the model's normalisation; the exported
    model records them, so inference and chained jobs normalise the same way."""
    task = _model_task(spec)
    if task.kind == "image" and spec.data.mean:
        task = replace(task, mean=tuple(spec.data.mean), std=tuple(spec.data.std))
    return task


def _model_task(spec: spec_pb2.JobSpec) -> TaskInfo:
    kind, arch = model_kind(spec)
    if kind == "hf":
        name = spec.model.name
        revision = spec.model.revision if spec.model.source == "hf" else None
        return TaskInfo(kind="text", tokenizer=_load_tokenizer(name, revision))

    data_size = spec.data.image_size if spec.data.HasField("image_size") else 0
    if spec.model.source == "job":
        saved = read_meta(spec.model.name).get("task", {})
        return TaskInfo(
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
        return TaskInfo("image", None, data_size or size, mean, std, channels)
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
        return TaskInfo("image", None, data_size or size, mean, std, 3)
    return TaskInfo("image", None, data_size or 224, IMAGENET_MEAN, IMAGENET_STD, 3)


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
    spec: spec_pb2.JobSpec, task: TaskInfo, num_labels: int, labels: list[str]
) -> ModelBundle:
    """Load/build the body named by spec.model and attach a new head for ``num_labels``."""
    kind, arch = model_kind(spec)
    head = head_dict(spec.model.head)
    random_init = spec.model.init == "random"
    notes: list[str] = []
    if kind == "hf":
        revision = spec.model.revision if spec.model.source == "hf" else None
        model = _load_hf(spec.model.name, revision, random_init=random_init)
        model, head_path = replace_hf_head(model, num_labels, labels, head)
        pad_id = getattr(task.tokenizer, "pad_token_id", None)
        if getattr(model.config, "pad_token_id", None) is None and pad_id is not None:
            model.config.pad_token_id = pad_id  # decoder models find the last token by it
    else:
        if spec.model.source == "job" and random_init:
            model = build_torchvision_arch(arch, in_channels=task.in_channels or 3)
        elif spec.model.source == "job":
            from tunefleet.worker.engine.export import load_model

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
    lora_targets: list[str] = []
    if spec.finetune.strategy == "lora":
        lora_targets = apply_lora(model, kind, head_path, spec.finetune.lora)
        lora = spec.finetune.lora
        adapters = sum(p.numel() for n, p in model.named_parameters() if is_lora_param(n))
        leaves = sorted({_short_name(t) for t in lora_targets})
        notes.append(
            f"LoRA r {lora.r}, alpha {lora.alpha:g}, dropout {lora.dropout:g} on "
            f"{len(lora_targets)} layers ({_preview(leaves)}): {adapters:,} adapter params"
        )
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

    try:
        with quiet_transformers():
            if random_init:  # same architecture, fresh weights (from the global torch RNG)
                config = AutoConfig.from_pretrained(name, revision=revision or None)
                return AutoModelForSequenceClassification.from_config(config)
            # ignore_mismatched_sizes: the checkpoint's own head may have another label count;
            # it is replaced right after, so a size mismatch there is expected.
            model = AutoModelForSequenceClassification.from_pretrained(
                name, revision=revision or None, ignore_mismatched_sizes=True
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
        raise InvalidJobInput(
            f"model.name: cannot load {name!r} as a Hugging Face model: {e}"
        ) from e


def _first_line(e: Exception) -> str:
    """torch's weights-only refusal, without its paragraph of advice."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    why = [line for line in lines if "unsupported" in line.lower()]
    return (why or lines or [type(e).__name__])[0][:300]


def build_torchvision_arch(
    arch: str, *, in_channels: int = 3, weights: str | None = None
) -> nn.Module:
    if arch == "smallcnn":
        return SmallCNN(num_classes=10, in_channels=in_channels)
    import torchvision

    if arch not in torchvision.models.list_models():
        raise InvalidJobInput(f"model.name: unknown torchvision architecture {arch!r}")
    return torchvision.models.get_model(arch, weights=weights or None)


def _load_torchvision(spec: spec_pb2.JobSpec, arch: str, task: TaskInfo) -> nn.Module:
    if spec.model.init == "random":
        return build_torchvision_arch(arch, in_channels=task.in_channels)
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


# ----------------------------------------------------------------------------- LoRA


def is_lora_param(name: str) -> bool:
    """LoRA adapter weights (lora_A / lora_B / lora_embedding_*), as PEFT names them."""
    return any(part.startswith("lora_") for part in name.split("."))


def _lora_eligible(module: nn.Module) -> bool:
    """Layer types PEFT's LoRA can adapt *and merge back* into a plain layer."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.groups == 1  # grouped/depthwise convs: PEFT cannot merge them
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return True
    return type(module).__name__ == "Conv1D"  # transformers' GPT-2 style projection


def lora_candidates(model: nn.Module, kind: str, head_path: str) -> list[str]:
    """Module names LoRA may target: adaptable layers of the body (the head trains fully).

    Linears inside nn.MultiheadAttention are skipped: its forward reads ``out_proj.weight``
    directly, so an adapter there would never see a gradient.
    """
    from tunefleet.worker.engine.freeze import model_blocks

    body = {p for block in model_blocks(model, kind, head_path)[:-1] for p in block.params}
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return [
        name
        for name, module in model.named_modules()
        if name
        and _lora_eligible(module)
        and f"{name}.weight" in body
        and not any(name.startswith(a + ".") for a in attention)
    ]


def apply_lora(model: nn.Module, kind: str, head_path: str, lora: spec_pb2.LoraSpec) -> list[str]:
    """Inject LoRA adapters (PEFT) in place; returns the adapted module names.

    ``target_modules`` entries match a module by its name or name suffix (``query`` matches
    ``bert.encoder.layer.0.attention.self.query``), as in PEFT; empty means every adaptable
    layer below the head. The model keeps its class and parameter names (plus
    ``.base_layer`` / ``.lora_A.default`` segments), so freeze plans, checkpoints and
    Accelerate treat it like any other model; `merge_lora` turns it back into a plain one.
    """
    import warnings

    from peft import LoraConfig, inject_adapter_in_model

    candidates = lora_candidates(model, kind, head_path)
    requested = list(lora.target_modules)
    if requested:
        targets = []
        for want in requested:
            hits = [n for n in candidates if n == want or n.endswith("." + want)]
            if not hits:
                leaves = sorted({_short_name(n) for n in candidates})
                raise InvalidJobInput(
                    f"finetune.lora.target_modules: {want!r} matches no adaptable layer below "
                    f"the head of {type(model).__name__} (Linear, Conv with groups 1, "
                    f"Embedding); layer names there: {_preview(leaves, 12)}"
                )
            targets += [n for n in hits if n not in targets]
    else:
        targets = candidates
    if not targets:
        raise InvalidJobInput(
            f"finetune.strategy: lora found no adaptable layer below the head of "
            f"{type(model).__name__}"
        )
    config = LoraConfig(
        r=lora.r if lora.HasField("r") else 8,
        lora_alpha=lora.alpha if lora.HasField("alpha") else 16.0,
        lora_dropout=lora.dropout if lora.HasField("dropout") else 0.0,
        target_modules=targets,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "fan_in_fan_out set to True" for Conv1D
        inject_adapter_in_model(config, model)
    return targets


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer (W += B A * alpha/r), in place.

    What is left is the plain architecture with plain parameter names, which is what the
    exported model/ folder holds: it loads with from_pretrained / load_model, no PEFT needed.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in adapted:
        module.merge()
        model.set_submodule(name, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def _short_name(module: str) -> str:
    """`bert.encoder.layer.0.attention.self.query` -> `query`; `stem.0` stays `stem.0`."""
    parts = module.split(".")
    keep = next((i for i in range(len(parts) - 1, -1, -1) if not parts[i].isdigit()), 0)
    return ".".join(parts[keep:])


def _preview(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")

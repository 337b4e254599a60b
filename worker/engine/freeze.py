"""Which parameters train, per epoch: the `FreezePlan`.

A model is seen as an ordered list of blocks, bottom to top, the last one always "head":
- hf:          embeddings, layer.0 .. layer.N-1, [pooler / pre_classifier / classifier.dense], head
- resnet:      stem (conv1, bn1), layer1 .. layer4, head (fc)
- vit:         stem (conv_proj, class_token, pos_embedding), layer.0 .. layer.N-1 (the last with
               the final LayerNorm), head
- features:    features.0 .. features.N (vgg, alexnet, mobilenet, efficientnet, convnext,
               densenet), then the classifier's hidden layers (alexnet/vgg classifier.1 and
               classifier.4 -- fc6 and fc7 --, mobilenet_v3 classifier.0), head
- smallcnn:    stem, stage1, stage2, head

The head block is the new output layer and nothing else (plus its optional `hidden` layer), so
head_only is a true linear probe on every architecture: pretrained layers between the body and
the output layer (BERT's pooler, AlexNet's fc6/fc7) are blocks of their own at the top of the
body, where last_k reaches them first. A parameter no rule claims becomes such a block, named
after its module; a normalisation layer joins the block before it (a norm alone is no layer).

Strategies pick trainable blocks (full, head_only, last_k, gradual, lp_ft) or parameters
(patterns; lora: the adapters models.apply_lora injected, plus the head block).
`FreezePlan.apply(model, epoch)` sets ``requires_grad`` and keeps frozen BatchNorm layers in
eval mode, so their running statistics stay those of the pretrained model even though the
rest of the network is in train mode. Call it after every ``model.train()``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tunefleet.v1 import job_pb2, spec_pb2
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.events import render_table
from tunefleet.worker.engine.heads import find_torchvision_head
from tunefleet.worker.engine.models import is_lora_param

STRATEGIES = ("full", "head_only", "last_k", "patterns", "gradual", "lp_ft", "lora")
DYNAMIC_STRATEGIES = ("gradual", "lp_ft")
HEAD = "head"


@dataclass(frozen=True)
class Block:
    name: str
    params: tuple[str, ...]  # parameter names, in model order
    numel: int
    sizes: tuple[int, ...] = ()  # numel of each parameter, as `params`


# ----------------------------------------------------------------------------- blocks


def model_blocks(model: nn.Module, kind: str, head_path: str = "") -> list[Block]:
    """The model's blocks, bottom to top; the last is the head (the new output layer).

    ``head_path`` is the new output layer's module path; without it (older callers, plain
    models) the output layer is found as models find it (`classifier`, `fc`, ...).
    """
    head_path = head_path or _default_head_path(model, kind)
    in_head = _prefix(head_path)
    rules = _hf_rules(model) if kind == "hf" else _vision_rules(model, head_path)
    modules = dict(model.named_modules())
    assigned: dict[str, list[str]] = {name: [] for name, _ in rules}
    assigned[HEAD] = []
    last = None  # the block the previous parameter went to
    for pname in (n for n, _ in model.named_parameters()):
        block = next((name for name, match in rules if match(pname)), None)
        if block is None and in_head(pname):
            block = HEAD
        if block is None:
            owner = pname.rpartition(".")[0]
            if _is_norm(modules.get(owner)) and last not in (None, HEAD):
                block = last  # a final LayerNorm belongs to the layer below it
            elif isinstance(modules.get(owner), nn.Embedding) and rules:
                block = rules[0][0]  # e.g. MPNet's relative position table: an embedding
            else:
                block = _leftover_name(owner, model, kind)
                assigned.setdefault(block, [])
        assigned[block].append(pname)
        last = block
    numels = {n: p.numel() for n, p in model.named_parameters()}

    def block(name: str, params: list[str]) -> Block:
        sizes = tuple(numels[p] for p in params)
        return Block(name, tuple(params), sum(sizes), sizes)

    # Rule blocks bottom to top, then the unclaimed layers, which sit between the body and the
    # output layer (registration order is not forward order: XLM-R registers its classifier
    # before its encoder).
    blocks = [block(name, params) for name, params in assigned.items() if params and name != HEAD]
    return blocks + [block(HEAD, assigned[HEAD])]


def _default_head_path(model: nn.Module, kind: str) -> str:
    if kind == "hf":
        classifier = getattr(model, "classifier", None)
        if isinstance(getattr(classifier, "out_proj", None), nn.Module):
            return "classifier.out_proj"
        return "classifier"
    return find_torchvision_head(model)[0]


def _is_norm(module: nn.Module | None) -> bool:
    return module is not None and (
        isinstance(module, _NORM_LAYERS) or "norm" in type(module).__name__.lower()
    )


def _leftover_name(owner: str, model: nn.Module, kind: str) -> str:
    """The block of a parameter no rule claims: BERT's `pooler`, DistilBERT's `pre_classifier`,
    RoBERTa's `classifier.dense`, AlexNet's `classifier.1`; inside a Hugging Face base model,
    the module right under it (ALBERT's shared `encoder`)."""
    prefix = getattr(model, "base_model_prefix", "") if kind == "hf" else ""
    if prefix and owner.startswith(prefix + "."):
        return owner[len(prefix) + 1 :].split(".")[0]
    return owner or "params"


def _prefix(path: str) -> Callable[[str], bool]:
    return lambda name: name == path or name.startswith(path + ".")


def _any_prefix(paths: list[str]) -> Callable[[str], bool]:
    return lambda name: any(name == p or name.startswith(p + ".") for p in paths)


_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _hf_rules(model: nn.Module) -> list[tuple[str, Callable[[str], bool]]]:
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if base is None:
        raise InvalidJobInput(f"model.name: cannot find the base model of {type(model).__name__}")
    n_layers = getattr(model.config, "num_hidden_layers", None)
    layers_path = next(
        (
            name
            for name, module in base.named_modules()
            if isinstance(module, nn.ModuleList) and len(module) == n_layers
        ),
        None,
    )
    rules: list[tuple[str, Callable[[str], bool]]] = [
        ("embeddings", lambda n: n.startswith(prefix + ".") and "embed" in n.split(".")[1])
    ]
    if layers_path is not None:
        full = f"{prefix}.{layers_path}"
        rules += [(f"layer.{i}", _prefix(f"{full}.{i}")) for i in range(n_layers)]
    return rules


def _vision_rules(model: nn.Module, head_path: str) -> list[tuple[str, Callable[[str], bool]]]:
    children = dict(model.named_children())
    if {"stem", "stage1", "stage2"} <= children.keys():  # SmallCNN
        return [(name, _prefix(name)) for name in ("stem", "stage1", "stage2")]
    if "conv1" in children and "layer1" in children:  # resnet family
        stem = ("conv1", "bn1")
        rules = [("stem", lambda n: n.split(".")[0] in stem)]
        return rules + [
            (f"layer{i}", _prefix(f"layer{i}")) for i in range(1, 5) if f"layer{i}" in children
        ]
    if "conv_proj" in children and hasattr(model, "encoder"):  # vit
        stem = ("class_token", "conv_proj", "encoder.pos_embedding")
        rules = [("stem", lambda n: any(n == s or n.startswith(s + ".") for s in stem))]
        layers = [name for name, _ in model.encoder.layers.named_children()]
        return rules + [
            (f"layer.{i}", _prefix(f"encoder.layers.{name}")) for i, name in enumerate(layers)
        ]
    if isinstance(children.get("features"), nn.Sequential):
        # One block per child with parameters; a bare norm layer (vgg*_bn) joins the conv
        # before it, so that last_k=1 trains a whole conv layer rather than one BatchNorm.
        groups: list[list[str]] = []
        for name, child in model.features.named_children():
            if not any(True for _ in child.parameters()):
                continue
            if groups and isinstance(child, _NORM_LAYERS):
                groups[-1].append(name)
            else:
                groups.append([name])
        return [
            (f"features.{group[0]}", _any_prefix([f"features.{n}" for n in group]))
            for group in groups
        ]
    head_root = head_path.split(".")[0]
    return [
        (name, _prefix(name))
        for name, child in children.items()
        if name != head_root and any(True for _ in child.parameters())
    ]


# ----------------------------------------------------------------------------- plan


class FreezePlan:
    """Decides, per epoch, which parameters train; applies that to a model."""

    def __init__(self, blocks: list[Block], finetune: spec_pb2.FinetuneSpec):
        self.blocks = blocks
        self.body = blocks[:-1]
        self.strategy = finetune.strategy or "full"
        self.finetune = finetune
        if self.strategy not in STRATEGIES:
            raise InvalidJobInput(f"finetune.strategy: unknown strategy {self.strategy!r}")
        if self.strategy == "last_k":
            k = finetune.k
            if k < 0 or k > len(self.body):
                raise InvalidJobInput(
                    f"finetune.k: {k} is out of range; the model has {len(self.body)} blocks "
                    f"below the head ({', '.join(b.name for b in self.body)})"
                )
        self._patterns_trainable = [re.compile(p) for p in finetune.trainable]
        self._patterns_frozen = [re.compile(p) for p in finetune.frozen]
        self.all_params = [p for b in blocks for p in b.params]
        self._numel = {n: k for b in blocks for n, k in zip(b.params, b.sizes, strict=False)}
        if self.strategy == "lora" and not any(is_lora_param(p) for p in self.all_params):
            raise InvalidJobInput(
                "finetune.strategy: lora, but the model has no LoRA adapters (models.apply_lora)"
            )
        if not self.trainable(0) and not self.dynamic:
            raise InvalidJobInput("finetune: this plan leaves no trainable parameters")

    @classmethod
    def for_model(
        cls, model: nn.Module, kind: str, finetune: spec_pb2.FinetuneSpec, head_path: str = ""
    ) -> FreezePlan:
        return cls(model_blocks(model, kind, head_path), finetune)

    @property
    def dynamic(self) -> bool:
        """True when the trainable set changes between epochs (gradual, lp_ft)."""
        return self.strategy in DYNAMIC_STRATEGIES

    def unfreeze_epoch(self, block_index: int) -> int:
        """The first (0-based) epoch in which block ``block_index`` trains."""
        depth = len(self.blocks) - 1 - block_index  # head 0, top body block 1, ...
        if self.strategy == "full" or depth == 0:
            return 0
        if self.strategy == "gradual":
            every = self.finetune.unfreeze_every if self.finetune.HasField("unfreeze_every") else 1
            return depth * max(every, 1)
        if self.strategy == "lp_ft":
            return self.finetune.probe_epochs if self.finetune.HasField("probe_epochs") else 1
        if self.strategy == "last_k":
            return 0 if depth <= self.finetune.k else -1
        return -1  # head_only; patterns and lora's adapters handled per parameter

    def trainable(self, epoch: int) -> set[str]:
        """Names of the parameters that train during ``epoch`` (0-based)."""
        if self.strategy == "patterns":
            return {
                name
                for name in self.all_params
                if (
                    not self._patterns_trainable
                    or any(p.search(name) for p in self._patterns_trainable)
                )
                and not any(p.search(name) for p in self._patterns_frozen)
            }
        names: set[str] = set()
        if self.strategy == "lora":
            names.update(p for p in self.all_params if is_lora_param(p))
        for i, block in enumerate(self.blocks):
            start = self.unfreeze_epoch(i)
            if 0 <= start <= epoch:
                names.update(block.params)
        return names

    def apply(self, model: nn.Module, epoch: int) -> None:
        """Set requires_grad for ``epoch`` and put fully frozen BatchNorm layers in eval mode."""
        trainable = self.trainable(epoch)
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)
        if not model.training:
            return
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                params = list(module.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    module.eval()

    # ------------------------------------------------------------------ rendering

    def rows(self) -> list[tuple[str, str, str]]:
        trainable0 = self.trainable(0)
        rows = []
        for i, block in enumerate(self.blocks):
            if self.strategy == "patterns":
                hits = sum(1 for n in block.params if n in trainable0)
                if hits == len(block.params):
                    state = "yes"
                elif hits:
                    state = f"partial ({hits}/{len(block.params)} tensors)"
                else:
                    state = "no"
            elif self.strategy == "lora" and i < len(self.body):
                adapters = sum(self._numel[n] for n in block.params if is_lora_param(n))
                state = f"lora {adapters:,}" if adapters else "no"
            else:
                start = self.unfreeze_epoch(i)
                state = "yes" if start == 0 else "no" if start < 0 else f"from epoch {start + 1}"
            rows.append((block.name, f"{block.numel:,}", state))
        return rows

    def trainable_numel(self, model: nn.Module, epoch: int = 0) -> int:
        names = self.trainable(epoch)
        return sum(p.numel() for n, p in model.named_parameters() if n in names)

    def table(self, model: nn.Module) -> str:
        total = sum(b.numel for b in self.blocks)
        train = self.trainable_numel(model, 0)
        share = 100.0 * train / total if total else 0.0
        shown = f"{share:.2g}" if 0 < share < 1 else f"{share:.1f}"  # a probe is 0.02%, not 0.0%
        header = (
            f"freeze plan: strategy {self.strategy}; trainable at start {train:,} of {total:,} "
            f"params ({shown}%)"
        )
        return header + "\n" + render_table(("block", "params", "trainable"), self.rows())

    def report(self, model: nn.Module) -> job_pb2.Report:
        report = job_pb2.Report(
            name="freeze_plan", columns=["block", "params", "trainable"], text=self.table(model)
        )
        for row in self.rows():
            report.rows.add(cells=list(row))
        return report


def plan_table(spec: spec_pb2.JobSpec) -> str:
    """The freeze plan of a job, rendered, without data or training (for `ftctl plan`).

    The head is sized from model.num_labels / model.labels, or 2 when neither is given (the
    data decides at run time; the body's blocks do not depend on it).
    """
    from tunefleet.worker.engine import models

    task = models.resolve_task(spec)
    try:
        n, labels = models.resolve_labels(spec)
    except InvalidJobInput:
        n, labels = 2, ["LABEL_0", "LABEL_1"]
    bundle = models.build_model(spec, task, n, labels)
    plan = FreezePlan.for_model(bundle.model, bundle.kind, spec.finetune, bundle.head_path)
    return plan.table(bundle.model)

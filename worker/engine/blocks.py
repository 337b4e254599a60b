"""A model as an ordered list of blocks, bottom to top, the last one always "head": `model_blocks`.

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

Freeze plans (freeze.py) choose blocks; LoRA (lora.py) adapts the body's blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.heads import find_torchvision_head

HEAD = "head"


@dataclass(frozen=True)
class Block:
    name: str
    params: tuple[str, ...]  # parameter names, in model order
    numel: int
    sizes: tuple[int, ...] = ()  # numel of each parameter, as `params`


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

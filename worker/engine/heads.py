"""The new output layer: how it is built, drawn and put where the old classifier was.

"Train only the new layer" must mean exactly that, so the head is one new Linear (or a
hidden Linear + ReLU + Linear when `head.hidden` asks), sized for this job's labels, placed
at the old output layer's path; every pretrained layer in front of it (BERT's pooler,
AlexNet's fc6/fc7) stays the model's and is a body block of the freeze plan.

Init (`head.init`): method = the seed method's N(0, 0.01) with 0.01 the variance (weights and
bias at std 0.1); model = the model's own recipe (a Hugging Face config's initializer_range,
else N(0, 0.01^2)); auto = method on Hugging Face models whose body trains from the first step,
model on torchvision ones and where the new layer first trains alone (`head_recipe`); normal =
N(0, init_std^2); default = PyTorch's. Bias: auto (N(0, the weights' std^2) under the method,
else zeros), zeros, or N(0, bias_std^2). Dropout: unset keeps the model's own in front of the
head; a value sets that layer's rate, or adds one where the model has none.
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch import nn

from tunefleet.spec.choices import HEAD_INIT_STD, HEAD_METHOD_STD
from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.errors import InvalidJobInput

# Strategies whose new layer first trains alone, on frozen features (a linear probe): for
# them init auto keeps the model's own small init (see `head_recipe`).
PROBE_FIRST = ("head_only", "lp_ft", "gradual")


def head_dict(head: spec_pb2.HeadSpec, strategy: str = "") -> dict[str, Any]:
    """The HeadSpec as plain values; None where the model's own choice applies. `strategy`
    (finetune.strategy) decides what init auto means (`head_recipe`).

    This dict is also saved in the exported folder's tunefleet_model.json, from which
    export.load_model rebuilds the same head structure.
    """
    init = head.init or ("normal" if head.HasField("init_std") else "auto")
    bias_init = head.bias_init or "auto"
    std = head.init_std if head.HasField("init_std") else None
    if init == "normal" and std is None:
        std = HEAD_INIT_STD
    return {
        "init": init,
        "init_std": std,
        "bias_init": bias_init,
        "bias_std": head.bias_std if head.HasField("bias_std") else std,
        "dropout": head.dropout if head.HasField("dropout") else None,
        "hidden": head.hidden if head.HasField("hidden") else 0,
        "probe_first": strategy in PROBE_FIRST,
    }


def make_head(
    in_features: int, num_labels: int, head: dict[str, Any], *, dropout: bool
) -> nn.Module:
    """[Dropout] -> [Linear+ReLU] -> Linear; a bare Linear when that is all there is.

    ``dropout``: whether this head carries the dropout itself (the model has none of its own
    just before the head to set). A bare Linear keeps Hugging Face parameter names
    (classifier.weight), so the exported folder loads with from_pretrained. Weights keep
    PyTorch's init here; `init_head` draws them as the spec says.
    """
    layers: list[nn.Module] = []
    p = head.get("dropout")
    if dropout and p:
        layers.append(nn.Dropout(p))
    width = in_features
    if head.get("hidden", 0) > 0:
        layers += [nn.Linear(in_features, head["hidden"]), nn.ReLU()]
        width = head["hidden"]
    layers.append(nn.Linear(width, num_labels))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def head_recipe(head: dict[str, Any], kind: str) -> str:
    """method | model | normal | default: what init auto means for this model and strategy.

    auto is the method (the seed's N(0, 0.01 variance), std 0.1) on a Hugging Face model
    whose body trains from the first step (full, last_k, patterns, lora): on 26 classes of
    real text, MiniLM's own initializer_range (0.02, what from_pretrained and HF Trainer
    give) trained 1.5-7 points worse (bench/quality_vs_trainer.py, README), as a larger head
    passes larger gradients into the body from the first steps. Where the head first trains
    alone (head_only, lp_ft, gradual: PROBE_FIRST) there is no body to reach, and the large
    random start cost a 3-epoch probe 8 points, so auto is the model's own init there.
    torchvision models keep their own N(0, 0.01^2): their classifiers read wide, unbounded
    ReLU features (AlexNet's 4,096), where std 0.1 would start from saturated logits."""
    init = head.get("init", "normal")
    if init == "auto":
        return "method" if kind == "hf" and not head.get("probe_first") else "model"
    return init


def head_weight_std(head: dict[str, Any], model: nn.Module, kind: str) -> float | None:
    """The std the new head's weights are drawn with; None for PyTorch's own init.

    init model is the model's own recipe: a Hugging Face model's config.initializer_range
    (what its _init_weights gives every Linear, 0.02 for BERT), else 0.01 (torchvision's own
    classifier init for VGG/MobileNet)."""
    recipe = head_recipe(head, kind)
    if recipe == "default":
        return None
    if recipe == "method":
        return HEAD_METHOD_STD
    if recipe == "model":
        if kind == "hf":
            return float(getattr(getattr(model, "config", None), "initializer_range", 0.02))
        return HEAD_INIT_STD
    std = head.get("init_std")
    return HEAD_INIT_STD if std is None else float(std)


def head_bias_std(head: dict[str, Any], kind: str, std: float) -> float | None:
    """The std the new head's bias is drawn with; None for zeros. bias_init auto follows the
    weights: the method draws the bias as it draws them, every other recipe zeros it."""
    bias_init = head.get("bias_init") or "auto"
    if bias_init == "normal":
        return std if head.get("bias_std") is None else float(head["bias_std"])
    if bias_init == "auto" and head_recipe(head, kind) == "method":
        return std
    return None


def init_head(module: nn.Module, head: dict[str, Any], kind: str, model: nn.Module) -> None:
    """Draw every Linear of the new head: weights N(0, std), bias zeros or N(0, bias_std)
    (`head_weight_std`, `head_bias_std`); PyTorch's own init is kept for init default."""
    std = head_weight_std(head, model, kind)
    if std is None:
        return
    bias_std = head_bias_std(head, kind, std)
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, mean=0.0, std=std)
            if layer.bias is None:
                continue
            if bias_std is not None:
                nn.init.normal_(layer.bias, mean=0.0, std=bias_std)
            else:
                nn.init.zeros_(layer.bias)


def find_torchvision_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The final classifier Linear: resnet .fc, vgg/mobilenet .classifier[-1], vit .heads.head..."""
    for path in ("fc", "heads.head", "head", "classifier"):
        with contextlib.suppress(AttributeError):
            module = model.get_submodule(path)
            if isinstance(module, nn.Linear):
                return path, module
            if isinstance(module, nn.Sequential) and isinstance(module[-1], nn.Linear):
                return f"{path}.{len(module) - 1}", module[-1]
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InvalidJobInput("model.name: this architecture has no Linear classifier to replace")
    return linears[-1]


def _dropout_before(model: nn.Module, path: str) -> nn.Dropout | None:
    """The Dropout right before the layer at ``path`` in its Sequential (efficientnet's
    classifier.0, mobilenet's classifier.2), if there is one."""
    parent, _, index = path.rpartition(".")
    if not parent or not index.isdigit():
        return None
    container = model.get_submodule(parent)
    i = int(index)
    if isinstance(container, nn.Sequential) and i > 0 and isinstance(container[i - 1], nn.Dropout):
        return container[i - 1]
    return None


def replace_torchvision_head(
    model: nn.Module, num_labels: int, head: dict[str, Any]
) -> tuple[nn.Module, str]:
    """Put a new output layer where the old one was; everything below it stays the model's.

    The classifier's own Dropout right before the output layer is kept (an explicit
    head.dropout sets its rate); otherwise an explicit rate adds a Dropout to the new head.
    """
    path, old = find_torchvision_head(model)
    own = _dropout_before(model, path)
    if own is not None and head.get("dropout") is not None:
        own.p = head["dropout"]
    new = make_head(old.in_features, num_labels, head, dropout=own is None)
    init_head(new, head, "torchvision", model)
    model.set_submodule(path, new)
    return model, path


def replace_hf_head(
    model: nn.Module, num_labels: int, labels: list[str], head: dict[str, Any]
) -> tuple[nn.Module, str]:
    """Swap the output layer of an *ForSequenceClassification model for a new one.

    BERT-like models have ``.dropout`` + ``.classifier`` (Linear); RoBERTa-like ones have a
    ``.classifier`` module with ``.dropout``, ``.dense`` and ``.out_proj``: only ``out_proj``
    is replaced (``dense`` is a layer of the body). The model's own dropout before the head
    stays as its config made it unless head.dropout is given.
    """
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        path, in_features, dropout = "classifier", classifier.in_features, _own_dropout(model)
    elif isinstance(getattr(classifier, "out_proj", None), nn.Linear):
        path, in_features = "classifier.out_proj", classifier.out_proj.in_features
        dropout = getattr(classifier, "dropout", None)
    else:
        raise InvalidJobInput(
            f"model.name: {type(model).__name__} has no `classifier` Linear head that tunefleet "
            "knows how to replace"
        )
    has_dropout = isinstance(dropout, nn.Dropout)
    rate = head.get("dropout")
    if has_dropout and rate is not None:
        dropout.p = rate  # "dropout applied to the features just before the head"
    new = make_head(in_features, num_labels, head, dropout=not has_dropout)
    init_head(new, head, "hf", model)
    model.set_submodule(path, new)
    config = model.config
    config.num_labels = num_labels
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    if rate is not None and hasattr(config, "classifier_dropout"):
        config.classifier_dropout = rate
    return model, path


def _own_dropout(model: nn.Module) -> nn.Module | None:
    """The Dropout a model with a Linear `classifier` applies right before it: `dropout`
    (BERT, ALBERT, DistilBERT, DeBERTa, ...) or `drop` (ModernBERT). Missing it would stack
    a second Dropout into the head, which from_pretrained then cannot load."""
    for name in ("dropout", "drop"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Dropout):
            return module
    return None


def describe_init(head: dict[str, Any], model: nn.Module, kind: str) -> str:
    std = head_weight_std(head, model, kind)
    if std is None:
        return "PyTorch's default init"
    bias_std = head_bias_std(head, kind, std)
    bias = "0" if bias_std is None else f"N(0, {bias_std:g}^2)"
    init, recipe = head.get("init", "normal"), head_recipe(head, kind)
    name = f"{init}: {recipe}" if recipe != init else init
    return f"weights N(0, {std:g}^2) ({name}), bias {bias}"

"""Parameter groups and optimizers.

One param group per (block, decay/no_decay): e.g. ``layer.5`` and ``layer.5.no_decay``. That
gives three things in one place:
- the new output layer at ``finetune.head_lr_scale`` x lr (default 1; e.g. 10 is Caffe's
  recipe for a freshly drawn layer);
- layerwise lr decay: lr of a body block = lr * decay ** depth, depth counted from the top
  (the top body block 1);
- ``finetune.lr_groups``: parameters matching a regex get their own lr (first match wins), in
  groups named ``lr_group.<i>``;
- no weight decay for biases and normalisation weights (1-d tensors, names with norm/bn/ln).

Static strategies put only the trainable parameters in the optimizer. Dynamic ones (gradual,
lp_ft) put every parameter in from the start: frozen ones get no gradient, and torch optimizers
skip parameters whose ``grad`` is None, so unfreezing never rebuilds the optimizer or scheduler.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.freeze import FreezePlan

_NORM_SEGMENT = re.compile(r"^(bn|ln|norm)\d*(_\d+)?$|norm", re.IGNORECASE)


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and normalisation weights are not decayed (decaying them only hurts)."""
    if param.ndim <= 1:
        return True
    return any(_NORM_SEGMENT.search(segment) for segment in name.split(".")[:-1])


def build_param_groups(
    model: nn.Module,
    plan: FreezePlan,
    finetune: spec_pb2.FinetuneSpec,
    optimizer: spec_pb2.OptimizerSpec,
) -> list[dict[str, Any]]:
    """Named param groups: each dict has name, params, lr, weight_decay."""
    base_lr = optimizer.lr
    head_scale = finetune.head_lr_scale if finetune.HasField("head_lr_scale") else 1.0
    weight_decay = optimizer.weight_decay
    decay = finetune.layerwise_lr_decay if finetune.HasField("layerwise_lr_decay") else 1.0
    overrides = [(re.compile(g.pattern), g.lr) for g in finetune.lr_groups]
    include = set(plan.all_params) if plan.dynamic else plan.trainable(0)
    params = dict(model.named_parameters())
    n_blocks = len(plan.blocks)

    groups: dict[str, dict[str, Any]] = {}

    def add(group: str, lr: float, name: str) -> None:
        nd = no_weight_decay(name, params[name])
        key = f"{group}.no_decay" if nd else group
        if key not in groups:
            groups[key] = {
                "name": key,
                "params": [],
                "lr": lr,
                "weight_decay": 0.0 if nd else weight_decay,
            }
        groups[key]["params"].append(params[name])

    # Head first, so that group 0 (the "lr" reported in metrics) is the head's lr.
    for index in reversed(range(n_blocks)):
        block = plan.blocks[index]
        depth = n_blocks - 1 - index
        for name in block.params:
            if name not in include:
                continue
            match = next((i for i, (rx, _) in enumerate(overrides) if rx.search(name)), None)
            if match is not None:
                add(f"lr_group.{match}", overrides[match][1], name)
            else:
                scale = head_scale if depth == 0 else decay**depth
                add(block.name, base_lr * scale, name)
    if not groups:
        raise InvalidJobInput("finetune: no trainable parameters for the optimizer")
    return list(groups.values())


def unused_lr_groups(groups: list[dict[str, Any]], finetune: spec_pb2.FinetuneSpec) -> list[str]:
    """One line per `finetune.lr_groups` entry that matched no parameter the optimizer holds:
    a typo, or a pattern over layers the strategy freezes (head_only trains the new layer
    alone). Such an entry changes nothing, which the job's log should say."""
    used = {g["name"].removesuffix(".no_decay") for g in groups}
    return [
        f"finetune.lr_groups[{i}]: pattern {g.pattern!r} matches no parameter that trains "
        f"under strategy {finetune.strategy or 'full'}; its lr {g.lr:g} is not used"
        for i, g in enumerate(finetune.lr_groups)
        if f"lr_group.{i}" not in used
    ]


def probe_lr_factors(
    param_groups: list[dict[str, Any]],
    plan: FreezePlan,
    finetune: spec_pb2.FinetuneSpec,
    steps_per_epoch: int,
) -> list[Callable[[int], float]] | None:
    """lp_ft: the new layer's groups train at ``finetune.probe_lr`` for the probe epochs'
    optimizer steps, then at their own lr (head_lr_scale x lr); every other group at its
    own throughout. A factor per group of the steps already taken, for the schedule
    (schedules.LrSchedule.lambda_lr). None when nothing differs."""
    if plan.strategy != "lp_ft" or not finetune.HasField("probe_lr"):
        return None
    probe_epochs = finetune.probe_epochs if finetune.HasField("probe_epochs") else 1
    probe_steps = probe_epochs * steps_per_epoch
    head = plan.blocks[-1].name
    factors: list[Callable[[int], float]] = []
    for group in param_groups:
        own = group["lr"]
        if group.get("name") in (head, f"{head}.no_decay") and own > 0:
            ratio = finetune.probe_lr / own
            factors.append(lambda taken, r=ratio: r if taken < probe_steps else 1.0)
        else:
            factors.append(lambda taken: 1.0)
    return factors


def build_optimizer(
    groups: list[dict[str, Any]], spec: spec_pb2.OptimizerSpec
) -> torch.optim.Optimizer:
    name = spec.name or "adamw"
    if name == "sgd":
        cls: type[torch.optim.Optimizer] = torch.optim.SGD
        kwargs: dict[str, Any] = dict(
            lr=spec.lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov,
            weight_decay=spec.weight_decay,
        )
    elif name in ("adam", "adamw"):
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        kwargs = dict(
            lr=spec.lr,
            betas=tuple(spec.betas) if len(spec.betas) == 2 else (0.9, 0.999),
            eps=spec.eps if spec.HasField("eps") else 1e-8,
            weight_decay=spec.weight_decay,
        )
    else:
        raise InvalidJobInput(f"optimizer.name: unknown optimizer {name!r} (sgd | adam | adamw)")
    # On CPU torch defaults to a Python loop over tensors: for MiniLM (22M params) that step
    # cost about as much as the backward pass (5.3 s of a 50-step epoch on 2 cores; 2.0 s
    # fused). Fused kernels exist for CPU and CUDA float tensors, and HF Trainer uses them by
    # default; the multi-tensor loop is the fallback where they do not apply.
    try:
        return cls(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return cls(groups, foreach=True, **kwargs)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}

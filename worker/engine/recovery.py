"""Recovery fine-tuning: a few optimizer steps that win back accuracy a pruned model lost.

`Recovery(...)` is the `recover(model, steps)` callback that compression.compress calls
between pruning and making the pruning permanent; the loop lives here so that compression.py
stays free of training code. Choices, and why:

- Data: the job's training split and collate, ``train.batch_size`` examples per micro-batch,
  ``train.grad_accum_steps`` micro-batches per step, reshuffled (with the job's seed) each
  time the split runs out. fp32 (no mixed precision), ``train.max_grad_norm`` as in training.
- What trains: what the job's freeze plan trained in its last epoch, rebuilt on the pruned
  model (a head-only job recovers its head only); frozen layers run in eval mode, as the
  trainer's frozen prefix does. A LoRA job's adapters were merged into the exported
  weights, so it recovers its head as head_only would.
- Optimizer: the job's (name, betas, eps, weight decay, layer-wise lr decay, lr_groups, built
  by optim.build_param_groups) at the job's base learning rates, held constant. The job's
  schedule usually ends near 0, which would not move the weights, and a warm-up would spend
  much of a budget of tens of steps.
- Pruned weights stay pruned: unstructured and zeroing masks are still attached as
  torch.nn.utils.prune hooks (``weight = weight_orig * weight_mask``), so a masked entry gets
  no gradient; structured encoder pruning removed its weights outright. The names the freeze
  plan and lr_groups see for masked weights end in ``_orig`` (``...query.weight_orig``).
- Device: the one the job trained on; the model comes back on the CPU in eval mode, as
  compression expects (compression runs in the main process only).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.freeze import FreezePlan
from tunefleet.worker.engine.optim import build_optimizer, build_param_groups

Forward = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Recovery:
    """recover(model, steps) for compress: trains `model` in place, returns loss figures."""

    spec: spec_pb2.JobSpec
    train: Dataset
    collate: Callable
    kind: str  # "hf" | "torchvision", for the freeze plan's blocks
    forward: Forward  # (model, batch) -> logits
    device: torch.device | str = "cpu"
    head_path: str = ""
    epoch: int = 0  # the job's last epoch (0-based): its freeze plan decides what trains

    def __call__(self, model: nn.Module, steps: int) -> dict[str, float]:
        spec = self.spec
        finetune = spec_pb2.FinetuneSpec()
        finetune.CopyFrom(spec.finetune)
        if finetune.strategy == "lora":
            finetune.strategy = "head_only"
        plan = FreezePlan.for_model(model, self.kind, finetune, self.head_path)
        model.to(self.device).train()
        plan.apply(model, self.epoch)
        for module in model.modules():  # as in training: frozen layers run in eval mode
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
        optimizer = build_optimizer(
            build_param_groups(model, plan, finetune, spec.optimizer), spec.optimizer
        )
        params = [p for p in model.parameters() if p.requires_grad]
        accum = max(spec.train.grad_accum_steps, 1)
        max_norm = spec.train.max_grad_norm
        batches = self._batches()
        losses: list[float] = []
        try:
            for _ in range(steps):
                total = 0.0
                for _ in range(accum):
                    batch = {k: _to(v, self.device) for k, v in next(batches).items()}
                    logits = self.forward(model, batch).float()
                    loss = F.cross_entropy(logits, batch["labels"]) / accum
                    loss.backward()
                    total += loss.item()
                if max_norm > 0:
                    nn.utils.clip_grad_norm_(params, max_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(total)
        finally:
            model.to("cpu").eval()
        window = max(1, min(10, len(losses) // 4))
        return {
            "loss_first": statistics.fmean(losses[:window]),
            "loss_last": statistics.fmean(losses[-window:]),
            "lr": float(spec.optimizer.lr),
        }

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Shuffled training batches, round after round, for as many steps as asked."""
        generator = torch.Generator().manual_seed(self.spec.train.seed)
        loader = DataLoader(
            self.train,
            batch_size=self.spec.train.batch_size,
            shuffle=True,
            collate_fn=self.collate,
            generator=generator,
        )
        if len(loader) == 0:
            raise ValueError("recovery: the training split is empty")
        while True:
            yield from loader


def _to(value: Any, device: torch.device | str) -> Any:
    return value.to(device) if torch.is_tensor(value) else value

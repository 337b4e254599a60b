"""Which parameters train, per epoch: the `FreezePlan`.

A model is an ordered list of blocks, bottom to top, the last one always "head" (blocks.py).

Strategies pick trainable blocks (full, head_only, last_k, gradual, lp_ft) or parameters
(patterns; lora: the adapters lora.apply_lora injected, plus the head block).
`FreezePlan.apply(model, epoch)` sets ``requires_grad`` and keeps frozen BatchNorm layers in
eval mode, so their running statistics stay those of the pretrained model even though the
rest of the network is in train mode. Call it after every ``model.train()``.
"""

from __future__ import annotations

import re

from torch import nn

from tunefleet.v1 import job_pb2, spec_pb2
from tunefleet.worker.engine.blocks import Block, model_blocks
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.events import render_table
from tunefleet.worker.engine.lora import is_lora_param

STRATEGIES = ("full", "head_only", "last_k", "patterns", "gradual", "lp_ft", "lora")
DYNAMIC_STRATEGIES = ("gradual", "lp_ft")

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
                n = len(self.body)
                raise InvalidJobInput(
                    f"finetune.k: {k} is out of range; the model has {n} blocks below the "
                    f"head ({', '.join(b.name for b in self.body)}); use at most {n}, or "
                    "strategy: full"
                )
        self._patterns_trainable = [re.compile(p) for p in finetune.trainable]
        self._patterns_frozen = [re.compile(p) for p in finetune.frozen]
        self.all_params = [p for b in blocks for p in b.params]
        self._numel = {n: k for b in blocks for n, k in zip(b.params, b.sizes, strict=False)}
        if self.strategy == "lora" and not any(is_lora_param(p) for p in self.all_params):
            raise InvalidJobInput(
                "finetune.strategy: lora, but the model has no LoRA adapters (lora.apply_lora)"
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

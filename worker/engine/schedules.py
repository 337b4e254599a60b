"""Learning-rate schedules as pure multipliers of the base lr.

`LrSchedule.multiplier(t)` is the factor applied to every param group's own base lr for the
optimizer step ``t`` (1-based: the first update uses ``multiplier(1)``). Scaling all groups by
the same factor keeps layerwise lr decay and ``lr_groups`` ratios intact across the schedule.

Formulas (T = total optimizer steps, W = warmup steps, c = t - 1 the steps already taken):
- warmup (any schedule), c < W:   c / W          (0 at the first step, as transformers does;
                                                  W > T never reaches the peak, as there)
- constant:                       1
- linear:   (T - c) / (T - W)     (lr_t = lr0 - (t-1)*lr0/T when W = 0: the method's formula)
- cosine:   f + (1-f) * (1 + cos(pi * (c-W)/(T-W))) / 2,  f = min_lr / lr0
- step:     gamma ** ((c-W) // step_size), step_size unset: ceil((T-W) / 3) (two drops)

These are transformers' get_{constant,linear,cosine}_schedule_with_warmup step for step (the
tests compare against them), so a job and an HF Trainer run see the same learning rates;
``warmup_ratio`` rounds up, as TrainingArguments.get_warmup_steps does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunefleet.v1 import spec_pb2

SCHEDULES = ("constant", "linear", "cosine", "step")


@dataclass(frozen=True)
class LrSchedule:
    name: str
    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.0
    step_size: int = 0  # 0: a third of the steps after warmup
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; expected one of {SCHEDULES}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")

    def multiplier(self, t: int) -> float:
        """The lr factor for optimizer step t (1-based)."""
        # Not capped at total_steps: a warmup longer than the run ramps at 1/W per step and
        # stops short of the peak, as transformers' schedules do.
        w = self.warmup_steps
        c = t - 1  # optimizer steps already taken
        if c < w:
            return c / w
        decay_steps = max(self.total_steps - w, 1)
        k = c - w  # steps taken since the warmup ended (0 at the first post-warmup step)
        if self.name == "constant":
            return 1.0
        if self.name == "linear":
            return max(1.0 - k / decay_steps, 0.0)
        if self.name == "cosine":
            progress = min(k / decay_steps, 1.0)
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (
                1.0 + math.cos(math.pi * progress)
            )
        # Unset, a third of the run after warmup: `step` alone drops twice (gamma, gamma²),
        # not every step (a step_size of 1 takes lr0 to 1e-10 x lr0 in 10 steps).
        size = self.step_size if self.step_size > 0 else math.ceil(decay_steps / 3)
        return self.gamma ** (k // max(size, 1))

    def lambda_lr(
        self,
        optimizer: torch.optim.Optimizer,
        group_factors: list[Callable[[int], float]] | None = None,
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """A LambdaLR whose k-th ``step()`` sets the lr for optimizer step k+1.
        `group_factors`: one per param group, a further factor of the steps already taken
        (lp_ft's probe lr for the new layer, optim.probe_lr_factors); None: the schedule
        alone. Functions of the step count, so a resumed run sets the same lrs."""
        if group_factors is None:
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: self.multiplier(i + 1))
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, [lambda i, f=f: self.multiplier(i + 1) * f(i) for f in group_factors]
        )


def build_schedule(spec: spec_pb2.ScheduleSpec, *, base_lr: float, total_steps: int) -> LrSchedule:
    """The schedule of a resolved ScheduleSpec for a run of ``total_steps`` optimizer steps."""
    if spec.HasField("warmup_ratio") and spec.warmup_ratio > 0:
        warmup = math.ceil(spec.warmup_ratio * total_steps)
    else:
        warmup = spec.warmup_steps
    min_ratio = spec.min_lr / base_lr if base_lr > 0 else 0.0
    return LrSchedule(
        name=spec.name or "linear",
        total_steps=max(total_steps, 1),
        warmup_steps=max(warmup, 0),
        min_ratio=min(max(min_ratio, 0.0), 1.0),
        step_size=spec.step_size if spec.HasField("step_size") else 0,
        gamma=spec.gamma if spec.HasField("gamma") else 0.1,
    )

"""The `Accelerator` a job trains with: devices, precision, accumulation, DDP settings.

Mixed precision and the device count are settings here, not code paths in the loop.
"""

from __future__ import annotations

from typing import Any

import torch

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.errors import InvalidJobInput


def make_accelerator(spec: spec_pb2.JobSpec) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = spec.train.precision or "no"
    if precision == "fp16" and not torch.cuda.is_available():
        raise InvalidJobInput("train.precision: fp16 needs a GPU; use bf16 or no on CPU")
    # gradual/lp_ft change requires_grad between epochs, so DDP must tolerate parameters
    # that get no gradient (the trainer registers every parameter with it).
    dynamic = spec.finetune.strategy in ("gradual", "lp_ft")
    # cpu=True is what makes N launched processes form a gloo MULTI_CPU group when there is
    # no GPU (without it each rank trains alone); a job that asked for no GPU stays off them.
    cpu = spec.resources.gpus == 0 or not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=max(spec.train.grad_accum_steps, 1),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=dynamic)],
    )

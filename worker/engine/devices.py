"""The `Accelerator` a job trains with: devices, precision, accumulation, DDP settings.

Mixed precision and the device count are settings here, not code paths in the loop.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.errors import InvalidJobInput


def make_accelerator(spec: spec_pb2.JobSpec) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = resolve_precision(spec)
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


def resolve_precision(spec: spec_pb2.JobSpec) -> str:
    """`train.precision` for Accelerate: "auto" (the default) is bf16 mixed precision where
    this hardware multiplies bf16 natively, fp32 ("no") elsewhere. Why a default: on such
    hardware a full fine-tune trains ~1.5x faster at equal accuracy (bench/engine_vs_trainer.py
    --variants bf16, bench/quality_vs_trainer.py --precision); where bf16 is emulated it is
    slower than fp32, so there auto keeps fp32. The weights stay fp32 either way (autocast)."""
    precision = spec.train.precision or "auto"
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(spec) else "no"


def native_bf16(spec: spec_pb2.JobSpec) -> bool:
    """Whether the device this job trains on computes bf16 natively."""
    if spec.resources.gpus > 0 and torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return bool(native_cpu_bf16())


_PRECISION = {
    "no": "fp32 (no mixed precision)",
    "bf16": "bf16 mixed precision",
    "fp16": "fp16 mixed precision",
    "fp8": "fp8 mixed precision",
}

# Fewer optimizer steps than this rarely fine-tune anything: the head alone needs some dozens.
FEW_STEPS = 50


def precision_of(acc: Any) -> str:
    """The precision an Accelerator computes in ("no", "bf16", "fp16"): train.precision
    auto's choice, too. Accelerate gives it as a str or an enum, by version."""
    return str(getattr(acc.mixed_precision, "value", acc.mixed_precision))


def run_lines(spec: spec_pb2.JobSpec, acc: Any, total_steps: int) -> list[tuple[str, str]]:
    """The run's first log lines, (level, text): its shape in words, then a warning when it
    takes too few optimizer steps to train anything."""
    global_batch = spec.train.batch_size * acc.num_processes * max(spec.train.grad_accum_steps, 1)
    auto = spec.train.precision in ("", "auto")
    lines = [("info", describe_run(acc, global_batch, total_steps, auto=auto))]
    warning = few_steps_warning(spec, total_steps, acc.num_processes)
    return lines + ([("warning", warning)] if warning else [])


def describe_run(acc: Any, global_batch: int, total_steps: int, *, auto: bool = False) -> str:
    """The run's shape in words, e.g. "training on 2 CPU processes (gloo), fp32 (no mixed
    precision), global batch 32, 25 optimizer steps" (Accelerate's own names, "MULTI_CPU"
    and "NO", mean nothing to a newcomer). `auto`: the precision was train.precision auto's
    choice, which the line then names."""
    n = acc.num_processes
    device = "GPU" if acc.device.type == "cuda" else acc.device.type.upper()
    where = f"{n} {device} process{'es' if n > 1 else ''}"
    if n > 1:
        where += " (gloo)" if device == "CPU" else " (nccl)"
    precision = precision_of(acc)
    described = _PRECISION.get(precision, precision)
    if auto:
        described += (
            " (train.precision auto: this hardware computes bf16 natively)"
            if precision == "bf16"
            else " (train.precision auto: no native bf16 here)"
        )
    line = (
        f"training on {where}, {described}, "
        f"global batch {global_batch}, {total_steps} optimizer steps"
    )
    if device == "CPU" and precision == "bf16" and native_cpu_bf16() is False:
        line += (
            "; this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 runs slower than "
            "fp32 here (train.precision: no)"
        )
    return line


def native_cpu_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16): there bf16
    autocast trains ~1.5x faster than fp32 (bench/engine_vs_trainer.py --variants bf16);
    elsewhere oneDNN emulates it, slower than fp32. None where /proc/cpuinfo is not there."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def few_steps_warning(spec: spec_pb2.JobSpec, total_steps: int, processes: int) -> str:
    """A warning when the whole run takes fewer than FEW_STEPS optimizer steps, else ""."""
    if total_steps >= FEW_STEPS or spec.train.max_steps > 0:
        return ""  # max_steps is an explicit choice of the step count
    t = spec.train
    accum = max(t.grad_accum_steps, 1)
    global_batch = t.batch_size * processes * accum
    epochs = max(t.epochs, 1)
    per_epoch = max(total_steps // epochs, 1)
    more_epochs = math.ceil(FEW_STEPS / per_epoch)
    hints = [f"train.epochs: {more_epochs}"]
    if t.batch_size > 1:
        hints.append("a smaller train.batch_size")
    if processes > 1:
        hints.append("fewer resources.processes")
    return (
        f"only {total_steps} optimizer steps in total ({epochs} epoch{'s' if epochs > 1 else ''} "
        f"x {per_epoch} steps "
        f"of global batch {global_batch}): fewer than {FEW_STEPS} steps rarely trains the new "
        f"head well; try {' or '.join(hints)}"
    )

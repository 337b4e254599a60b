"""Out-of-memory recovery: the same optimisation in smaller pieces.

When a micro-batch does not fit, `run_job` retries the job from its newest checkpoint with
`halved_micro_batch(spec)`: half the micro-batch, twice the gradient accumulation, the same
global batch. The checkpoint's position in the epoch converts exactly (checkpoints sit on
optimizer-step boundaries), so the resumed run takes the steps the first one would have.

`INJECT_OOM_ENV` lets the tests make a CPU run out of memory on cue.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import TypeVar

import torch

from tunefleet.v1 import job_pb2, spec_pb2
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.events import log_event

R = TypeVar("R")

# Fault injection for the OOM-recovery tests (a CPU cannot run out of GPU memory on cue):
# micro-batches of at least this many examples raise torch.OutOfMemoryError as CUDA would.
INJECT_OOM_ENV = "TUNEFLEET_INJECT_OOM_AT_BATCH"


def retry_on_oom(
    run: Callable[[spec_pb2.JobSpec, bool], R],
    spec: spec_pb2.JobSpec,
    emit: Callable[[job_pb2.Event], None],
    *,
    resume: bool,
) -> R:
    """``run(spec, resume)``, again with `halved_micro_batch` (resuming) while it runs out of
    memory; InvalidJobInput once the micro-batch cannot be halved. Before and after every
    try, Accelerate's process-wide state is released, so each try and job starts afresh."""
    while True:
        # Accelerate keeps process-wide singletons, and refuses an Accelerator whose precision
        # differs from theirs: a Trainer or an earlier job in this process (tests, notebooks,
        # the in-process API) must not decide this job's train.precision.
        release_accelerate_state()
        try:
            return run(spec, resume)
        except torch.OutOfMemoryError as exc:
            smaller = halved_micro_batch(spec)
            if smaller is None:
                raise InvalidJobInput(
                    f"train.batch_size: out of memory with a micro-batch of "
                    f"{spec.train.batch_size} ({exc}); use a smaller model, max_length or "
                    "image size, or more GPUs"
                ) from exc
            emit(
                log_event(
                    f"out of memory with micro-batch {spec.train.batch_size}: retrying with "
                    f"micro-batch {smaller.train.batch_size} x {smaller.train.grad_accum_steps} "
                    "accumulation steps (same global batch), from the newest checkpoint",
                    level="warning",
                )
            )
        finally:
            release_accelerate_state()  # the next job in this process starts afresh
        # Only here, past the except clause: its traceback held the failed run's frames, and
        # with them its model, optimizer and activations.
        free_accelerator_memory()
        spec, resume = smaller, True


def release_accelerate_state() -> None:
    """Forget Accelerate's process-wide precision and accumulation settings; the process
    group (PartialState) stays, as a launched job's ranks need it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def halved_micro_batch(spec: spec_pb2.JobSpec) -> spec_pb2.JobSpec | None:
    """The spec with half the micro-batch and twice the accumulation, or None at batch 1.

    The global batch (and so the optimisation) stays the same: what OOM recovery may change
    is how a step is computed, never what it computes. Odd batch sizes cannot be split
    evenly, so they are not halved either.
    """
    batch = spec.train.batch_size
    if batch < 2 or batch % 2:
        return None
    smaller = spec_pb2.JobSpec()
    smaller.CopyFrom(spec)
    smaller.train.batch_size = batch // 2
    smaller.train.grad_accum_steps = max(spec.train.grad_accum_steps, 1) * 2
    return smaller


def free_accelerator_memory() -> None:
    """What a failed run left on the accelerator goes back to its allocator's pool."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class InjectedOom:
    """Tests only (INJECT_OOM_ENV): a micro-batch at least this large fails as CUDA would."""

    def __init__(self) -> None:
        self.at = int(os.environ.get(INJECT_OOM_ENV) or 0)  # 0 = off

    def check(self, batch: dict[str, torch.Tensor]) -> None:
        if self.at and len(batch["labels"]) >= self.at:
            raise torch.OutOfMemoryError(
                f"{INJECT_OOM_ENV}: injected out of memory at micro-batch {len(batch['labels'])}"
            )


def position_in_batches(batch_in_epoch: int, micro_batch_size: int, batch_size: int) -> int:
    """A checkpoint's position in its epoch, counted in micro-batches of `micro_batch_size`,
    in micro-batches of `batch_size` (OOM recovery halved it). Checkpoints sit on
    optimizer-step boundaries, so the examples consumed convert exactly."""
    if not micro_batch_size or micro_batch_size == batch_size:
        return batch_in_epoch
    consumed = batch_in_epoch * micro_batch_size
    if consumed % batch_size:
        raise InvalidJobInput(
            f"train.batch_size: the checkpoint was written with micro-batch "
            f"{micro_batch_size}; {batch_size} does not divide its position in the epoch"
        )
    return consumed // batch_size

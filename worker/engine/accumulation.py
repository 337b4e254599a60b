"""Gradient accumulation that averages over an optimizer step's examples, however many.

Accelerate divides each micro-batch's mean loss by grad_accum_steps. That is the mean over
the step's examples only when the step has grad_accum_steps micro-batches of one size, and
the last step of an epoch rarely has: the data does not divide by the global batch. With
42 examples, batch 2 x 4 gave the last step's 2 examples a quarter of the gradient that
batch 8 gives the same 2, and batch 4 x 2 half of it. So accumulation was not the larger
batch it stands for, and OOM recovery (half the micro-batch, twice the accumulation)
changed what the last step of every epoch computed.

`StepMean` weights each micro-batch by its examples (mean loss x size / batch_size) and,
when a step ends with fewer than batch_size x grad_accum_steps examples, scales the summed
gradients to their mean before clipping. Full steps are untouched (no factor at all), so
a run whose data divides trains bit for bit as before; so does one without accumulation.
The count is this process's: with several processes DDP averages their steps' means.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class StepMean:
    """Counts one optimizer step's examples; see the module docstring."""

    def __init__(self, micro_batch_size: int, accum_steps: int):
        self.micro_batch_size = micro_batch_size
        self.accum_steps = max(accum_steps, 1)
        self.examples = 0

    def backward_loss(self, loss: torch.Tensor, size: int) -> torch.Tensor:
        """The loss to backpropagate for a micro-batch of `size` examples whose mean loss
        is `loss` (what is logged stays `loss`)."""
        self.examples += size
        if self.accum_steps == 1 or size == self.micro_batch_size:
            return loss
        return loss * (size / self.micro_batch_size)

    def end_step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """At an optimizer step, gradients synced, before clipping: the accumulated
        gradients become the mean over the step's examples."""
        full = self.micro_batch_size * self.accum_steps
        examples, self.examples = self.examples, 0
        if self.accum_steps == 1 or examples in (0, full):
            return
        factor = full / examples
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(factor)

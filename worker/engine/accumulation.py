"""Each optimizer step's gradient is the mean over the examples it holds, however many.

Two things made the last step of an epoch (the data rarely divides by the global batch)
differ from the same step on one process without accumulation:

- Accelerate divides every micro-batch's mean loss by grad_accum_steps. With 42 examples,
  batch 2 x 4 gave the last step's 2 examples a quarter of the gradient that batch 8 gives
  them; OOM recovery (half the micro-batch, twice the accumulation) changed it too.
- With several processes, Accelerate deals batches round-robin and tops the last ones up
  with the epoch's first examples (`even_batches`, so that every process steps together):
  2 processes of batch 4 trained the last step on its 2 examples and 6 repeats.

`StepShare` knows, from the epoch's size alone, how many examples of each micro-batch are
the epoch's own (the repeats are appended at a batch's end) and how many the whole step
holds, on every process; `share_loss` weights each micro-batch by that share. DDP's mean
over processes and Accelerate's division are undone in the factor, so a step is the mean
over its examples. A full step's factor is exactly 1 and nothing is masked, so runs whose
data divides train bit for bit as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def own_examples(n: int, batch: int, processes: int, rank: int, micro: int) -> int:
    """How many of micro-batch `micro` (of the epoch, on process `rank`) are examples of
    the epoch's `n`, not repeats: it is base batch micro x processes + rank."""
    return max(0, min(batch, n - (micro * processes + rank) * batch))


class StepShare:
    """The examples of an epoch's micro-batches and of the optimizer steps they make up."""

    def __init__(self, *, examples: int, batch: int, processes: int, rank: int, accum: int):
        self.n, self.batch, self.processes, self.rank = examples, batch, processes, rank
        self.accum = max(accum, 1)
        self.full = batch * processes * self.accum

    def of(self, micro: int) -> tuple[int, float]:
        """(own examples of micro-batch `micro`, the factor on their mean loss)."""
        own = own_examples(self.n, self.batch, self.processes, self.rank, micro)
        first = micro - micro % self.accum
        step = sum(
            own_examples(self.n, self.batch, self.processes, p, m)
            for p in range(self.processes)
            for m in range(first, first + self.accum)
        )
        if own == self.batch and step == self.full:
            return own, 1.0
        return own, own * self.processes * self.accum / step


def share_loss(
    logits: torch.Tensor, labels: torch.Tensor, own: int, factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to log: the mean over the micro-batch's own examples, or over all of it
    when it holds only repeats; the loss to backpropagate)."""
    if own == len(labels):
        loss = F.cross_entropy(logits, labels)
        return loss, loss if factor == 1.0 else loss * factor
    if own > 0:
        loss = F.cross_entropy(logits[:own], labels[:own])
        return loss, loss * factor
    # Repeats only: no share of the step, but DDP still waits for this process's backward.
    return F.cross_entropy(logits, labels), logits.sum() * 0.0

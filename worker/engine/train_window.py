"""`TrainWindow`: the training steps since the last train log, summed on the device.

Loss, correct predictions, micro-batches and examples are added up as device tensors and read
once per log (one reduce over all processes), never once per step: a host sync per step
costs throughput on a GPU. Consecutive non-finite losses are counted the same way, so the
divergence check (divergence.py) needs no sync of its own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WindowFigures:
    """One window, summed over every process."""

    loss: float  # mean micro-batch loss
    samples: float
    correct: float
    elapsed_s: float
    diverged: bool  # some process saw `patience` non-finite losses in a row (ever, not just here)


class TrainWindow:
    def __init__(self, device: torch.device, patience: int):
        self.device = device
        self.patience = patience
        self._nonfinite_run = torch.zeros((), device=device, dtype=torch.long)
        self._diverged = torch.zeros((), device=device, dtype=torch.bool)
        self.reset()

    def reset(self) -> None:
        self._loss = torch.zeros((), device=self.device)
        self._correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.batches = 0
        self._samples = 0
        self._start = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One micro-batch; training accuracy from the logits the step computed anyway."""
        self._loss += loss.detach().float()
        self._correct += (logits.detach().argmax(-1) == labels).sum()
        self.batches += 1
        self._samples += len(labels)

    def step_loss(self, loss: torch.Tensor) -> None:
        """After an optimizer step: count consecutive non-finite losses."""
        finite = torch.isfinite(loss.detach())
        self._nonfinite_run = torch.where(finite, 0, self._nonfinite_run + 1)
        self._diverged |= self._nonfinite_run >= self.patience

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (evaluation, checkpoints) is not training time: it stays out of
        samples/s."""
        elapsed = time.perf_counter() - self._start
        try:
            yield
        finally:
            self._start = time.perf_counter() - elapsed

    def reduce(self, accelerator) -> WindowFigures:
        """The window over all processes (every process calls this at the same step)."""
        elapsed = time.perf_counter() - self._start
        stats = torch.stack(
            [
                self._loss,
                torch.tensor(float(self.batches), device=accelerator.device),
                torch.tensor(float(self._samples), device=accelerator.device),
                self._correct.float(),
                self._diverged.float(),
            ]
        )
        loss_sum, batches, samples, correct, diverged = accelerator.reduce(
            stats, reduction="sum"
        ).tolist()
        return WindowFigures(
            loss=loss_sum / max(batches, 1.0),
            samples=samples,
            correct=correct,
            elapsed_s=elapsed,
            diverged=bool(diverged),
        )

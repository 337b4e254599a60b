"""Stopping on SIGTERM at an optimizer-step boundary: `SigtermFlag` and `Preempted`.

The worker sends SIGTERM when it drains or the machine is being taken away. The loop checks
the flag after each optimizer step, writes a checkpoint and raises `Preempted`, which ends the
engine process with EXIT_PREEMPTED; the worker then requeues the job, which resumes from that
checkpoint.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch

EXIT_PREEMPTED = 75  # the process's exit code after a SIGTERM checkpoint-and-stop


class Preempted(SystemExit):
    """SIGTERM arrived (the worker drains, or the machine is being taken away): the run wrote
    a checkpoint at an optimizer-step boundary and stops. Being a SystemExit, it ends the
    engine process with EXIT_PREEMPTED; the worker then requeues the job, which resumes from
    that checkpoint."""

    def __init__(self, step: int):
        super().__init__(EXIT_PREEMPTED)
        self.step = step


class SigtermFlag:
    """While entered (in the main thread), SIGTERM only sets a flag, which the training loop
    checks after each optimizer step: stopping mid-step would lose the step, and a signal
    handler cannot safely write a checkpoint."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
            self._installed = False

    def _on_sigterm(self, signum, frame) -> None:
        self.received = True

    def agreed(self, accelerator) -> bool:
        """True if any process got SIGTERM. Every process calls this at the same step, so
        all of them checkpoint and stop together."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor(float(self.received), device=accelerator.device)
        return accelerator.reduce(flag, reduction="sum").item() > 0

    def agreed_with(self, accelerator, *, due_on_main: bool) -> tuple[bool, bool]:
        """(a checkpoint is due, SIGTERM arrived), agreed by every process in one reduce per
        step, so all of them checkpoint or stop at the same step: the main process's clock
        decides the first (`due_on_main`), any process's signal the second."""
        if accelerator.num_processes == 1:
            return due_on_main, self.received
        flags = torch.tensor(
            [float(due_on_main and accelerator.is_main_process), float(self.received)],
            device=accelerator.device,
        )
        due, sigterm = (accelerator.reduce(flags, reduction="sum") > 0).tolist()
        return due, sigterm

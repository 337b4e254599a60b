"""Divergence: a run whose loss (or eval metric) stays NaN or infinite is over.

Before, `optimizer.lr: 1e308` trained to the end on NaN weights, exported them and the job
SUCCEEDED. Now N consecutive non-finite values (train losses, one per optimizer step, or
eval metrics) fail the job with "diverged at step S (loss nan)". The exception is raised
before anything else is saved, so no NaN model is exported and the best weights from before
the divergence (OUT/best, saved only for finite metrics) stay where they were.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from tunefleet.worker.engine.errors import Diverged

# A single NaN batch can happen (an fp16 overflow that the loss scaler skips); three in a
# row is a run that will not come back.
DEFAULT_PATIENCE = 3


class DivergenceGuard:
    """Counts consecutive non-finite values; `observe` raises Diverged at `patience`."""

    def __init__(self, patience: int = DEFAULT_PATIENCE):
        self.patience = max(patience, 1)
        self._run = 0

    def observe(self, step: int, name: str, value: float) -> None:
        if math.isfinite(value):
            self._run = 0
            return
        self._run += 1
        if self._run >= self.patience:
            self.fail(step, name, value)

    def fail(self, step: int, name: str, value: float) -> None:
        """Raise Diverged. The trainer counts train losses on the device and calls this at
        the next log, once every process agrees that `patience` steps in a row were bad."""
        raise Diverged(
            f"diverged at step {step} ({name} {_show(value)}): {self.patience} or more "
            "non-finite values in a row; lower optimizer.lr or set train.max_grad_norm. No "
            "model was exported; the best weights from before (if any) are in the job's best/ "
            "folder"
        )

    def observe_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        bad = next(((k, v) for k, v in metrics.items() if not math.isfinite(v)), None)
        if bad is None:
            self._run = 0
        else:
            self.observe(step, f"eval {bad[0]}", bad[1])


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _show(value: float) -> str:
    if math.isfinite(value):
        return f"{value:g}"
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")

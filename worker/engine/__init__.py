"""The fine-tuning engine: model building, freeze plans, schedules, the training loop, export.

`run_job`, `EngineResult` and `load_model` import torch; they are loaded on first use so that
`tunefleet.worker.engine.launch` and `.errors` stay importable without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunefleet.worker.engine.errors import EngineError, InvalidJobInput

if TYPE_CHECKING:
    from tunefleet.worker.engine.export import load_model
    from tunefleet.worker.engine.trainer import EngineResult, run_job

__all__ = ["EngineError", "EngineResult", "InvalidJobInput", "load_model", "run_job"]


def __getattr__(name: str) -> Any:
    if name in ("run_job", "EngineResult"):
        from tunefleet.worker.engine import trainer

        return getattr(trainer, name)
    if name == "load_model":
        from tunefleet.worker.engine.export import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

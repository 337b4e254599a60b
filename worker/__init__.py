"""tunefleet.worker: the daemon that runs jobs handed out by the coordinator.

    python -m tunefleet.worker --coordinator HOST:PORT [--artifacts DIR] [--gpus N] [--id ID]

(`ftctl worker` is the same command: both build their flags in tunefleet.worker.command_line.)

Importing this package does not import torch; only the training process (the engine,
tunefleet.worker.engine) does. Nor does it import the daemon (gRPC and all) until
`WorkerDaemon` is asked for: the engine's modules live under this package, and a training
process (or the warm engine host, which must stay free of gRPC to fork safely) would
otherwise load the whole daemon with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunefleet.worker.daemon import WorkerDaemon

__all__ = ["WorkerDaemon"]


def __getattr__(name: str) -> Any:
    if name == "WorkerDaemon":
        from tunefleet.worker.daemon import WorkerDaemon

        return WorkerDaemon
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

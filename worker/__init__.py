"""tunefleet.worker: the daemon that runs jobs handed out by the coordinator.

    python -m tunefleet.worker --coordinator HOST:PORT [--artifacts DIR] [--gpus N] [--id ID]

(`ftctl worker` is the same command: both build their flags in tunefleet.worker.command_line.)

Importing this package does not import torch; only the training process (the engine,
tunefleet.worker.engine) does.
"""

from tunefleet.worker.daemon import WorkerDaemon

__all__ = ["WorkerDaemon"]

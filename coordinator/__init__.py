"""tunefleet.coordinator: the gRPC service that queues jobs, places them on workers and
keeps every job's events.

    from tunefleet.coordinator import start_server
    with start_server("127.0.0.1:0", "/tmp/tf.db") as server:
        print(server.address)

The exports load on first use (PEP 562), so `ftctl`, which builds `ftctl server`'s flags
from tunefleet.coordinator.command_line, does not load the server for every command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunefleet.coordinator.server import CoordinatorServer, serve, start_server

__all__ = ["CoordinatorServer", "serve", "start_server"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("tunefleet.coordinator.server"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

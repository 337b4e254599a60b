"""Defaults that several entry points share, written once.

`ftctl`, `python -m tunefleet.coordinator`, `python -m tunefleet.worker`, the SDK and
`start_server` all fall back to the same coordinator address and the same folder layout
under `.tunefleet/`; when each wrote its own copy, they could (and did) drift.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_ARTIFACTS",
    "DEFAULT_DB_PATH",
    "DEFAULT_RUNS",
    "ENV_COORDINATOR",
]

# Where a coordinator listens and a client dials when told nothing: loopback, because a
# coordinator without TLS and tokens serves loopback only (coordinator/server.py).
DEFAULT_ADDRESS = "127.0.0.1:50051"
# The environment variable that names the coordinator for clients and workers.
ENV_COORDINATOR = "TUNEFLEET_COORDINATOR"
DEFAULT_DB_PATH = ".tunefleet/coordinator.db"
DEFAULT_ARTIFACTS = ".tunefleet/artifacts"
# `ftctl run`'s output folders (no coordinator involved).
DEFAULT_RUNS = ".tunefleet/runs"

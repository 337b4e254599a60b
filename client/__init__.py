"""The tunefleet SDK (no torch needed): submit, follow and cancel fine-tuning jobs.

    from tunefleet.client import Client

    with Client() as client:                 # $TUNEFLEET_COORDINATOR or 127.0.0.1:50051
        job = client.submit("job.yaml")      # validated locally first
        final = job.wait()
        print(final.state, final.summary, final.artifacts["model"])

`LocalCluster` starts a coordinator and one worker on this machine (what `ftctl up` runs).
"""

# Exports load on first use (PEP 562), so `import tunefleet.client.cli` stays light and the
# CLI can configure gRPC's logging before grpc is first imported.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunefleet.client.client import (
        DEFAULT_TARGET,
        ENV_TARGET,
        Client,
        JobHandle,
        RetryPolicy,
    )
    from tunefleet.client.errors import (
        Aborted,
        AlreadyExists,
        Cancelled,
        DeadlineExceeded,
        FailedPrecondition,
        FieldError,
        InternalError,
        JobFailed,
        NotFound,
        PermissionDenied,
        ResourceExhausted,
        TunefleetError,
        Unauthenticated,
        Unavailable,
        Unimplemented,
        ValidationError,
        from_rpc_error,
    )
    from tunefleet.client.local import (
        LocalCluster,
    )
    from tunefleet.client.sweeps import (
        Sweep,
        SweepHandle,
        SweepState,
        Trial,
    )
    from tunefleet.client.types import (
        Event,
        Job,
        JobState,
        LogLine,
        Metrics,
        Report,
        StateChange,
        Worker,
    )
    from tunefleet.client.uploads import (
        UploadError,
        UploadProgress,
    )

_EXPORTS = {
    "DEFAULT_TARGET": "tunefleet.client.client",
    "ENV_TARGET": "tunefleet.client.client",
    "Client": "tunefleet.client.client",
    "JobHandle": "tunefleet.client.client",
    "RetryPolicy": "tunefleet.client.client",
    "Aborted": "tunefleet.client.errors",
    "AlreadyExists": "tunefleet.client.errors",
    "Cancelled": "tunefleet.client.errors",
    "DeadlineExceeded": "tunefleet.client.errors",
    "FailedPrecondition": "tunefleet.client.errors",
    "FieldError": "tunefleet.client.errors",
    "InternalError": "tunefleet.client.errors",
    "JobFailed": "tunefleet.client.errors",
    "NotFound": "tunefleet.client.errors",
    "PermissionDenied": "tunefleet.client.errors",
    "ResourceExhausted": "tunefleet.client.errors",
    "TunefleetError": "tunefleet.client.errors",
    "Unauthenticated": "tunefleet.client.errors",
    "Unavailable": "tunefleet.client.errors",
    "Unimplemented": "tunefleet.client.errors",
    "ValidationError": "tunefleet.client.errors",
    "from_rpc_error": "tunefleet.client.errors",
    "LocalCluster": "tunefleet.client.local",
    "Sweep": "tunefleet.client.sweeps",
    "SweepHandle": "tunefleet.client.sweeps",
    "SweepState": "tunefleet.client.sweeps",
    "Trial": "tunefleet.client.sweeps",
    "Event": "tunefleet.client.types",
    "Job": "tunefleet.client.types",
    "JobState": "tunefleet.client.types",
    "LogLine": "tunefleet.client.types",
    "Metrics": "tunefleet.client.types",
    "Report": "tunefleet.client.types",
    "StateChange": "tunefleet.client.types",
    "Worker": "tunefleet.client.types",
    "UploadError": "tunefleet.client.uploads",
    "UploadProgress": "tunefleet.client.uploads",
}

__all__ = [
    "DEFAULT_TARGET",
    "ENV_TARGET",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "Event",
    "FailedPrecondition",
    "FieldError",
    "InternalError",
    "Job",
    "JobFailed",
    "JobHandle",
    "JobState",
    "LocalCluster",
    "LogLine",
    "Metrics",
    "NotFound",
    "PermissionDenied",
    "Report",
    "ResourceExhausted",
    "RetryPolicy",
    "StateChange",
    "Sweep",
    "SweepHandle",
    "SweepState",
    "Trial",
    "TunefleetError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UploadError",
    "UploadProgress",
    "ValidationError",
    "Worker",
    "from_rpc_error",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""Errors the coordinator's core raises, each carrying the gRPC status it becomes.

The scheduler raises these instead of aborting RPCs itself, so it reads as plain Python
and ``service.py`` is the one place that turns a refusal into a gRPC status
(``context.abort_with_status(exc.status())``). Field errors and exhausted limits travel as
structured details beside the message (tunefleet.status_details), so the SDK reads them
back as data instead of parsing text.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from tunefleet.status_details import (
    WORKER_ID_IN_USE,
    ErrorInfo,
    FieldViolation,
    QuotaViolation,
    to_status,
)


class CoordinatorError(Exception):
    """A request the coordinator refuses, with a message the caller can act on."""

    code = grpc.StatusCode.INTERNAL

    def status(self) -> grpc.Status:
        """The status the caller receives: the code, the message and any details."""
        return to_status(self.code, str(self))


class InvalidArgument(CoordinatorError):
    """A malformed request; `field_violations` name each bad field when known."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, field_violations: Iterable[FieldViolation] = ()):
        super().__init__(message)
        self.field_violations = list(field_violations)

    def status(self) -> grpc.Status:
        return to_status(self.code, str(self), field_violations=self.field_violations)


class NotFound(CoordinatorError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CoordinatorError):
    """What the request would create exists already, made from something else."""

    code = grpc.StatusCode.ALREADY_EXISTS


class WorkerIdInUse(AlreadyExists):
    """Another live worker process holds this worker id (coordinator/worker_instances.py).

    The ErrorInfo (reason WORKER_ID_IN_USE, the id, the holder's host and how long the
    coordinator waits for a silent holder before giving the id to a new process) lets a
    worker tell this from other refusals without parsing the message."""

    def __init__(self, message: str, *, worker_id: str, hostname: str, takeover_after_s: float):
        super().__init__(message)
        self.metadata = {
            "worker_id": worker_id,
            "hostname": hostname,
            "takeover_after_s": f"{takeover_after_s:g}",
        }

    def status(self) -> grpc.Status:
        return to_status(
            self.code, str(self), error_info=ErrorInfo(WORKER_ID_IN_USE, self.metadata)
        )


class FailedPrecondition(CoordinatorError):
    """The request is well formed but the job or worker is not in a state that allows it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(CoordinatorError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(CoordinatorError):
    """A limit that protects the coordinator is reached; retrying later may succeed.

    `quota` names the limit (its flag and value), so a client can say which setting to
    raise without parsing the message."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, quota: QuotaViolation | None = None):
        super().__init__(message)
        self.quota = quota

    def status(self) -> grpc.Status:
        quotas = [self.quota] if self.quota else []
        return to_status(self.code, str(self), quota_violations=quotas)


def invalid_spec(errors: list[tuple[str, str]]) -> InvalidArgument:
    """The one refusal for spec problems: "- path: message" lines for people, and each
    problem as a structured field violation for the SDK (which never parses the lines)."""
    lines = "".join(f"\n- {path}: {message}" for path, message in errors)
    return InvalidArgument(
        f"invalid job spec:{lines}",
        [FieldViolation(path, message) for path, message in errors],
    )


def check_key_reuse(existing_id: str, stored, given) -> None:
    """Raises AlreadyExists when an idempotency key that made `existing_id` (from the spec
    `stored`) comes back with another spec `given` (both JobSpec, as prepared). A retry
    sends the same spec and gets the first job back; a reused key with an edited spec got
    it back too, silently, and the caller believed the new spec was running."""
    if stored == given:
        return
    fields = [
        f.name for f in given.DESCRIPTOR.fields if getattr(stored, f.name) != getattr(given, f.name)
    ]
    raise AlreadyExists(
        f"this idempotency key already submitted {existing_id}, from a different spec "
        f"(it differs in {', '.join(fields)}): use a new key, or the same spec to get "
        f"{existing_id} back"
    )

"""Errors the coordinator's core raises, each carrying the gRPC status code it becomes.

The scheduler raises these instead of aborting RPCs itself, so it reads as plain Python
and ``service.py`` is the one place that turns a refusal into a gRPC status.
"""

from __future__ import annotations

import grpc


class CoordinatorError(Exception):
    """A request the coordinator refuses, with a message the caller can act on."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(CoordinatorError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CoordinatorError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(CoordinatorError):
    """The request is well formed but the job or worker is not in a state that allows it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(CoordinatorError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(CoordinatorError):
    """A limit that protects the coordinator is reached; retrying later may succeed."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def invalid_spec(errors: list[tuple[str, str]]) -> InvalidArgument:
    """The one message format for spec problems; the SDK parses the "- path: message" lines."""
    lines = "".join(f"\n- {path}: {message}" for path, message in errors)
    return InvalidArgument(f"invalid job spec:{lines}")

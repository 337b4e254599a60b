"""The SDK's one exception tree: users catch `TunefleetError`, never a raw `grpc.RpcError`.

TunefleetError
├── ValidationError       INVALID_ARGUMENT, OUT_OF_RANGE, a bad local spec (.errors),
│                         an SDK argument of the wrong type or range
├── NotFound              NOT_FOUND
├── AlreadyExists         ALREADY_EXISTS
├── PermissionDenied      PERMISSION_DENIED
├── Unauthenticated       UNAUTHENTICATED
├── FailedPrecondition    FAILED_PRECONDITION
├── Aborted               ABORTED
├── ResourceExhausted     RESOURCE_EXHAUSTED (.violations: the limits that refused)
├── DeadlineExceeded      DEADLINE_EXCEEDED, and `JobHandle.wait(timeout=...)` running out
├── Unavailable           UNAVAILABLE (after the client's own retries gave up)
├── Cancelled             CANCELLED (the call, not the job)
├── Unimplemented         UNIMPLEMENTED (client and coordinator versions disagree)
├── InternalError         UNKNOWN, INTERNAL, DATA_LOSS
└── JobFailed             `JobHandle.wait(raise_on_failure=True)` saw FAILED or CANCELLED

Field errors and exhausted limits arrive as structured status details
(tunefleet.status_details), so `.errors` holds each problem exactly as the coordinator
found it, newlines and all.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import grpc

from tunefleet.spec.errors import FieldError, SpecError
from tunefleet.status_details import QuotaViolation, read_details

if TYPE_CHECKING:
    from tunefleet.client.types import Job

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldError",
    "InternalError",
    "JobFailed",
    "NotFound",
    "PermissionDenied",
    "QuotaViolation",
    "ResourceExhausted",
    "TunefleetError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "ValidationError",
    "from_rpc_error",
    "parse_field_errors",
]


class TunefleetError(Exception):
    """Root of every error the SDK raises.

    Attributes:
        message: What went wrong, in words a user can act on.
        code: The gRPC status code name (e.g. "NOT_FOUND") when the error came from the
            coordinator, else None.
        target: The coordinator address the failed call went to, if any.
    """

    def __init__(self, message: str, *, code: str | None = None, target: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.target = target


class ValidationError(TunefleetError, ValueError):
    """A job spec (or another argument) was rejected; `.errors` lists every problem."""

    def __init__(self, message: str, errors: list[FieldError] | None = None, **kw):
        self.errors: list[FieldError] = list(errors or [])
        if self.errors and "\n" not in message:
            message = message + ":\n" + "\n".join(f"- {e}" for e in self.errors)
        super().__init__(message, **kw)

    @classmethod
    def from_spec_error(cls, e: SpecError) -> ValidationError:
        return cls(str(e), e.errors)


class NotFound(TunefleetError, LookupError):
    """The job (or worker) does not exist on this coordinator."""


class AlreadyExists(TunefleetError):
    pass


class PermissionDenied(TunefleetError):
    pass


class Unauthenticated(TunefleetError):
    pass


class FailedPrecondition(TunefleetError):
    """The call is valid but not in the object's current state (e.g. a finished job)."""


class Aborted(TunefleetError):
    pass


class ResourceExhausted(TunefleetError):
    """A limit of the coordinator refused the call; retrying later may succeed.

    `.violations` names each limit (`subject` is the setting that raises it, e.g.
    "--max-followers", `limit` its value) when the coordinator said which.
    """

    def __init__(self, message: str, violations: list[QuotaViolation] | None = None, **kw):
        self.violations: list[QuotaViolation] = list(violations or [])
        super().__init__(message, **kw)


class DeadlineExceeded(TunefleetError, TimeoutError):
    """A call (or a wait) ran past its deadline."""


class Unavailable(TunefleetError, ConnectionError):
    """The coordinator could not be reached, even after retrying with backoff."""


class Cancelled(TunefleetError):
    pass


class Unimplemented(TunefleetError):
    pass


class InternalError(TunefleetError):
    pass


class JobFailed(TunefleetError):
    """Raised by `JobHandle.wait(raise_on_failure=True)` when the job did not succeed.

    `.job` is the final `Job` (state FAILED or CANCELLED, with its reason).
    """

    def __init__(self, job: Job):
        self.job = job
        reason = f": {job.reason}" if job.reason else ""
        super().__init__(f"job {job.id} {job.state.value}{reason}")


_BY_CODE: dict[grpc.StatusCode, type[TunefleetError]] = {
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.INVALID_ARGUMENT: ValidationError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: ValidationError,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DATA_LOSS: InternalError,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    # OK never arrives as an error; mapped so that every code has an answer.
    grpc.StatusCode.OK: InternalError,
}


def parse_field_errors(details: str) -> list[FieldError]:
    """FieldErrors from the text of an INVALID_ARGUMENT without structured details (a
    coordinator older than status details): each line starting with "- " split at the first
    ": ". A message holding a newline splits wrongly here, which is why details replaced it."""
    errors = []
    for line in details.splitlines():
        if not line.startswith("- "):
            continue
        path, sep, message = line[2:].partition(": ")
        errors.append(FieldError(path, message) if sep else FieldError("", path))
    return errors


def from_rpc_error(e: grpc.RpcError, *, target: str | None = None) -> TunefleetError:
    """Map a failed gRPC call to the matching TunefleetError (see the module docstring)."""
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else None) or ""
    if not isinstance(code, grpc.StatusCode):
        return InternalError(details or str(e) or "unknown gRPC error")
    cls = _BY_CODE[code]
    if cls is Unavailable:
        where = f" at {target}" if target else ""
        message = f"cannot reach coordinator{where}" + (f" ({details})" if details else "")
    elif cls is DeadlineExceeded and not details.strip():
        message = "deadline exceeded"
    else:
        message = details or code.name.lower().replace("_", " ")
    if cls is ValidationError:
        structured = read_details(e)
        if structured.has_details:
            errors = [FieldError(v.path, v.message) for v in structured.field_violations]
        else:
            errors = parse_field_errors(details)
        return ValidationError(message, errors, code=code.name, target=target)
    if cls is ResourceExhausted:
        violations = read_details(e).quota_violations
        return ResourceExhausted(message, violations, code=code.name, target=target)
    return cls(message, code=code.name, target=target)


_INT32_MAX = 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def wire_limit(limit: int) -> int:
    """A list call's `limit` as the wire's int32 carries it: <= 0 stays "all" (0), a
    larger one than int32 holds means all there are too; not an integer: ValidationError
    (protobuf would raise a bare TypeError or ValueError)."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ValidationError(f"limit: expected an integer, got {limit!r}")
    return min(max(limit, 0), _INT32_MAX)


# The SDK's arguments are checked before they reach protobuf, which would raise a bare
# TypeError or ValueError ("bad argument type for built-in operation") naming nothing.


def wire_int(name: str, value: int, low: int = _INT64_MIN, high: int = _INT64_MAX) -> int:
    """An integer argument that the wire carries from `low` to `high`; else ValidationError
    naming the argument and the range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ValidationError(f"{name}: must be from {low} to {high}, got {value}")
    return value


def wire_str(name: str, value: str, example: str = "") -> str:
    """A string argument; anything else is a ValidationError naming it."""
    if not isinstance(value, str):
        hint = f" such as {example!r}" if example else ""
        raise ValidationError(
            f"{name}: expected a string{hint}, got {type(value).__name__} {value!r}"
        )
    return value


def seconds(name: str, value: float | None) -> float | None:
    """A timeout in seconds (None: no limit); a negative one means "already over"."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValidationError(f"{name}: expected seconds (a number) or None, got {value!r}")
    return float(value)

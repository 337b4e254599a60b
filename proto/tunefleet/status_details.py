"""Structured error details on the wire: how a refusal's field errors and exhausted limits
travel beside its human message, as `google.rpc.Status` details (gRPC's rich error model).

The coordinator used to join field errors into its message as "- path: message" lines and
the SDK split them back, so a message holding a newline (a file name quoted in "no such
file: ...") came back as two problems. Now each problem is a `google.rpc.BadRequest` field
violation, each exhausted limit a `google.rpc.QuotaFailure` violation naming its flag, and a
refusal a client must recognise (a worker id in use by another process) a `google.rpc.ErrorInfo`
with a stable reason;
the message stays the readable text it always was, for people and for clients (grpcurl)
that ignore details. Both ends call this one module, so the shape is written once.

Metadata budget: details ride in the `grpc-status-details-bin` trailer next to the message
in `grpc-message`, and gRPC refuses trailers over 8 KiB (the call then fails with
RESOURCE_EXHAUSTED instead of the refusal). What counts is the size on the wire: the message
is percent-encoded (a newline costs 3 bytes), the details are base64-encoded (4 bytes per
3), and the message is repeated inside the details. So the message and the violations each get
half of `TRAILER_BUDGET_BYTES` on the wire; what does not fit is cut with a note saying so,
never silently. A status without details is sent exactly as `context.abort` sends it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "TRAILER_BUDGET_BYTES",
    "WORKER_ID_IN_USE",
    "ErrorInfo",
    "FieldViolation",
    "QuotaViolation",
    "StatusDetails",
    "read_details",
    "to_status",
]

# Message plus details, in bytes on the wire: under gRPC's default 8 KiB metadata limit
# with room for the other trailers.
TRAILER_BUDGET_BYTES = 7 * 1024
# Half for the message, counted twice (percent-encoded in grpc-message, and inside the
# base64 details); the other half for the violations (base64, less the Any's type URL).
_MESSAGE_COST = TRAILER_BUDGET_BYTES // 2
_DETAILS_RAW_BYTES = (TRAILER_BUDGET_BYTES // 2) * 3 // 4 - 100
# ErrorInfo.domain: whose reasons these are.
_DOMAIN = "tunefleet"
# ErrorInfo.reason of a registration or heartbeat refused because another live process
# holds the worker id (metadata: worker_id, hostname, takeover_after_s): the worker stops
# with the message instead of retrying (tunefleet.worker.rpc_retry.id_in_use).
WORKER_ID_IN_USE = "WORKER_ID_IN_USE"


@dataclass(frozen=True)
class FieldViolation:
    """One problem with a request field: its dotted path and what is wrong, verbatim."""

    path: str
    message: str


@dataclass(frozen=True)
class QuotaViolation:
    """A limit that refused the call: `subject` names the setting that raises it (e.g.
    "--max-followers"), `limit` its current value, `description` what it bounds."""

    subject: str
    description: str
    limit: int = 0


@dataclass(frozen=True)
class ErrorInfo:
    """Why a call was refused, as a stable `reason` (e.g. "WORKER_ID_IN_USE") a client can
    act on without parsing the message, and `metadata` (short strings) about it."""

    reason: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StatusDetails:
    """What `read_details` found in a failed call's status; empty lists when none.

    `has_details` is False when the status carried no details at all (gRPC's own errors, or
    a coordinator older than status details): only then is the message text all there is.
    """

    field_violations: list[FieldViolation]
    quota_violations: list[QuotaViolation]
    has_details: bool = False
    error_info: ErrorInfo | None = None


def to_status(
    code: grpc.StatusCode,
    message: str,
    *,
    field_violations: Sequence[FieldViolation] = (),
    quota_violations: Sequence[QuotaViolation] = (),
    error_info: ErrorInfo | None = None,
) -> grpc.Status:
    """The status to pass to `context.abort_with_status`: `message` plus the details.

    Without details it is the plain status `context.abort(code, message)` sends, message
    uncut; with them, the message is also repeated inside the details (gRPC's rich error
    model checks the two agree), so both are cut to fit the trailer budget together."""
    details: list[any_pb2.Any] = []
    if field_violations:
        details.append(_pack(_bad_request(field_violations, _DETAILS_RAW_BYTES)))
    if quota_violations:
        details.append(_pack(_quota_failure(quota_violations)))
    if error_info is not None:
        info = error_details_pb2.ErrorInfo(reason=error_info.reason, domain=_DOMAIN)
        info.metadata.update(error_info.metadata)
        details.append(_pack(info))
    if not details:
        return _Status(code, message, None)
    status = status_pb2.Status(
        code=code.value[0], message=_clip_message(message, _MESSAGE_COST), details=details
    )
    return rpc_status.to_status(status)


class _StatusFields(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple | None


class _Status(_StatusFields, grpc.Status):
    """A status without details: what `context.abort(code, message)` sends."""


def read_details(error: grpc.RpcError) -> StatusDetails:
    """The structured details of a failed call (nothing for a coordinator that sent none,
    e.g. an older one, or for errors gRPC itself raised)."""
    status = None
    if hasattr(error, "trailing_metadata"):
        try:
            status = rpc_status.from_call(error)
        except ValueError:
            # Details whose code disagrees with the call's: gRPC replaced the status on the
            # way (e.g. trailers too large); the call's own code is the truth.
            status = None
    if status is None:
        return StatusDetails([], [])
    fields: list[FieldViolation] = []
    quotas: list[QuotaViolation] = []
    error_info = None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            quotas += [
                QuotaViolation(v.subject, v.description, v.quota_value) for v in quota.violations
            ]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            error_info = ErrorInfo(info.reason, dict(info.metadata))
    return StatusDetails(fields, quotas, has_details=True, error_info=error_info)


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _bad_request(violations: Iterable[FieldViolation], budget: int) -> error_details_pb2.BadRequest:
    """Every violation that fits in `budget` bytes; a last one says how many did not."""
    violations = list(violations)
    bad = error_details_pb2.BadRequest()
    # Room for the "N more" note (a few dozen bytes) is kept back from the start.
    room = budget - 80
    for i, v in enumerate(violations):
        entry = error_details_pb2.BadRequest.FieldViolation(field=v.path, description=v.message)
        if entry.ByteSize() + 3 > room:
            left = len(violations) - i
            bad.field_violations.add(
                field="",
                description=f"... and {left} more problem{'s' if left > 1 else ''} "
                "(too many to send at once)",
            )
            break
        bad.field_violations.append(entry)
        room -= entry.ByteSize() + 3  # tag and length prefix of the repeated field
    return bad


def _quota_failure(violations: Iterable[QuotaViolation]) -> error_details_pb2.QuotaFailure:
    return error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=v.subject, description=v.description, quota_value=v.limit
            )
            for v in violations
        ]
    )


def _wire_bytes(byte: int) -> int:
    """What one byte of the message costs on the wire: percent-encoded in `grpc-message`
    (3 bytes unless printable ASCII), plus 4/3 (rounded up) inside the base64 details."""
    return (1 if 0x20 <= byte <= 0x7E and byte != 0x25 else 3) + 2


def _clip_message(text: str, budget: int) -> str:
    """`text` cut to cost at most `budget` bytes on the wire, with a note when cut."""
    data = text.encode("utf-8")
    if sum(_wire_bytes(b) for b in data) <= budget:
        return text
    note = " ... (cut: too long to send whole)"
    room, end = budget - 3 * len(note), 0
    while end < len(data) and room >= _wire_bytes(data[end]):
        room -= _wire_bytes(data[end])
        end += 1
    return data[:end].decode("utf-8", errors="ignore") + note

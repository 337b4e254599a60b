"""Who may call what: bearer tokens, three roles, and the one interceptor that enforces them.

Every call carries `authorization: Bearer <token>` metadata. The coordinator knows tokens
only by their SHA-256 (a tokens file may also hold plaintext tokens, hashed on load), maps
each to a named principal with a role, and checks the role against the method:

    admin   every RPC (DrainWorker only admins)
    user    SubmitJob, GetJob, ListJobs, CancelJob, StreamEvents(+Batches), ListWorkers and
            the sweep RPCs -- only on the jobs and sweeps it submitted (the servicer checks
            ownership, see `may_see`)
    worker  RegisterWorker, Heartbeat, AcquireJob, ReportEvents, FinishJob, ReleaseJob

No or unknown token -> UNAUTHENTICATED; a known token calling a method its role lacks ->
PERMISSION_DENIED. Another user's job answers NOT_FOUND with the same message as a job
that does not exist, so job ids cannot be probed for existence. Health checks
(grpc.health.v1) need no token: probes carry none and learn nothing about jobs.

Tokens are never logged: refusals name the principal or say "no token"/"unknown token",
and `RedactBearer` scrubs anything that looks like a bearer token from log records.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

__all__ = [
    "ENV_TOKENS",
    "ENV_TOKENS_FILE",
    "AuthInterceptor",
    "Principal",
    "RedactBearer",
    "Role",
    "TokenTable",
    "TokensFileError",
    "caller",
    "hash_token",
    "may_see",
]

ENV_TOKENS_FILE = "TUNEFLEET_TOKENS_FILE"
# The tokens document itself (YAML/JSON), for deployments that inject secrets as env vars.
ENV_TOKENS = "TUNEFLEET_TOKENS"

SERVICE_PREFIX = "/tunefleet.v1.Coordinator/"
# Methods anyone may call: liveness/readiness probes carry no credentials.
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
# A token shorter than this is guessable; `ftctl token` makes 43-character ones.
MIN_TOKEN_CHARS = 16


class Role(str, enum.Enum):
    ADMIN = "admin"
    USER = "user"
    WORKER = "worker"


# Each Coordinator RPC and the roles (besides admin) that may call it. An RPC missing here
# is admin-only, which is the safe failure for a newly added method; the security tests
# list every RPC of the service so a new one gets a deliberate entry.
USER_METHODS = frozenset(
    {
        "SubmitJob",
        "GetJob",
        "ListJobs",
        "CancelJob",
        "StreamEvents",
        "StreamEventBatches",
        "ListWorkers",
        "SubmitSweep",
        "GetSweep",
        "ListSweeps",
        "CancelSweep",
    }
)
WORKER_METHODS = frozenset(
    {"RegisterWorker", "Heartbeat", "AcquireJob", "ReportEvents", "FinishJob", "ReleaseJob"}
)
# RPCs deliberately left to admins (draining takes a machine out of the fleet): listed so
# the decision is visible, though admin-only is also what an unlisted RPC gets.
ADMIN_ONLY_METHODS = frozenset({"DrainWorker"})
_METHODS_BY_ROLE = {Role.USER: USER_METHODS, Role.WORKER: WORKER_METHODS}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the name from the tokens file and its role."""

    name: str
    role: Role

    def may_call(self, method: str) -> bool:
        """`method` is the RPC's short name ("SubmitJob")."""
        return self.role is Role.ADMIN or method in _METHODS_BY_ROLE.get(self.role, ())


class TokensFileError(ValueError):
    """A tokens file that cannot be used; the message never contains a token."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class TokenTable:
    """The tokens the coordinator accepts, by SHA-256, each with its principal."""

    def __init__(self, principals_by_hash: Mapping[str, Principal], *, plaintext: bool = False):
        if not principals_by_hash:
            raise TokensFileError("no tokens given: an empty tokens file would lock everyone out")
        self._by_hash = dict(principals_by_hash)
        self.plaintext = plaintext  # some came as plaintext `token`, not `token_sha256`

    @classmethod
    def from_entries(cls, entries: Any, *, source: str = "tokens") -> TokenTable:
        """Entries: a list of {name, role, token_sha256 | token} (or {"tokens": [...]})."""
        if isinstance(entries, dict) and set(entries) == {"tokens"}:
            entries = entries["tokens"]
        if not isinstance(entries, list):
            raise TokensFileError(f"{source}: expected a list of {{name, role, token_sha256}}")
        by_hash: dict[str, Principal] = {}
        plaintext = False
        names: set[str] = set()
        problems: list[str] = []
        for i, entry in enumerate(entries):
            where = f"{source}[{i}]"
            if not isinstance(entry, dict):
                problems.append(f"{where}: expected a mapping")
                continue
            unknown = set(entry) - {"name", "role", "token", "token_sha256"}
            if unknown:
                problems.append(f"{where}: unknown keys {sorted(unknown)}")
            name, role = entry.get("name"), entry.get("role")
            if not isinstance(name, str) or not name.strip():
                problems.append(f"{where}.name: required")
                continue
            where = f"{source}[{i}] ({name})"
            if name in names:
                problems.append(f"{where}: name given twice")
            names.add(name)
            try:
                role = Role(role)
            except ValueError:
                problems.append(f"{where}.role: one of admin, user, worker; got {role!r}")
                continue
            token, digest = entry.get("token"), entry.get("token_sha256")
            if (token is None) == (digest is None):
                problems.append(f"{where}: give exactly one of token_sha256 or token")
                continue
            if token is not None:
                if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN_CHARS:
                    problems.append(f"{where}.token: must be at least {MIN_TOKEN_CHARS} characters")
                    continue
                digest = hash_token(token.strip())
                plaintext = True
            elif not isinstance(digest, str) or not _HEX64.match(digest.lower()):
                problems.append(f"{where}.token_sha256: expected 64 hex digits")
                continue
            digest = digest.lower()
            if digest in by_hash:
                problems.append(f"{where}: same token as {by_hash[digest].name}")
                continue
            by_hash[digest] = Principal(name=name, role=role)
        if problems:
            raise TokensFileError("invalid tokens:\n" + "\n".join(f"- {p}" for p in problems))
        return cls(by_hash, plaintext=plaintext)

    @classmethod
    def from_text(cls, text: str, *, source: str = "tokens") -> TokenTable:
        import yaml  # YAML is a superset of JSON: one parser reads both

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            # The parser's message may quote the offending line, which may hold a token.
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise TokensFileError(f"{source}: not valid YAML or JSON{where}") from None
        return cls.from_entries(data, source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TokenTable:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokensFileError(f"cannot read tokens file {path}: {exc.strerror}") from None
        table = cls.from_text(text, source=str(path))
        with contextlib.suppress(OSError):
            if table.plaintext and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning(
                    "tokens file %s holds plaintext tokens and is readable by others "
                    "(chmod 600 it, or store token_sha256 instead)",
                    path,
                )
        return table

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TokenTable | None:
        """$TUNEFLEET_TOKENS (the document) or $TUNEFLEET_TOKENS_FILE; None when neither."""
        environ = os.environ if environ is None else environ
        if environ.get(ENV_TOKENS):
            return cls.from_text(environ[ENV_TOKENS], source=f"${ENV_TOKENS}")
        if environ.get(ENV_TOKENS_FILE):
            return cls.from_file(environ[ENV_TOKENS_FILE])
        return None

    def copy(self) -> TokenTable:
        return TokenTable(self._by_hash, plaintext=self.plaintext)

    def add(self, name: str, role: Role | str, token: str) -> None:
        """Accepts one more token (an embedded cluster's own worker, say)."""
        self._by_hash[hash_token(token)] = Principal(name=name, role=Role(role))

    def authenticate(self, token: str) -> Principal | None:
        # Looked up by digest: lookup timing can reveal at most a prefix of a stored SHA-256,
        # which says nothing about the token behind it.
        return self._by_hash.get(hash_token(token))

    def __len__(self) -> int:
        return len(self._by_hash)

    def __repr__(self) -> str:  # never the hashes either
        return f"TokenTable({len(self)} tokens)"


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of the call's `authorization: Bearer ...` metadata; "" when malformed."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, token = value.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    return None


# ---- the interceptor ------------------------------------------------------------------


class AuthenticatedContext:
    """The servicer's view of a call: the gRPC context plus `principal`."""

    def __init__(self, context: grpc.ServicerContext, principal: Principal):
        self._context = context
        self.principal = principal

    def __getattr__(self, name: str):
        return getattr(self._context, name)


def caller(context) -> Principal | None:
    """The principal behind a call; None when the coordinator runs without tokens."""
    return getattr(context, "principal", None)


def may_see(principal: Principal | None, submitter: str) -> bool:
    """Whether the caller may see, follow or cancel a job submitted by `submitter`."""
    if principal is None or principal.role is Role.ADMIN:
        return True
    return principal.role is Role.USER and principal.name == submitter


def _short_name(method: str) -> str:
    return method.rsplit("/", 1)[-1]


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every call (unary and streaming alike) and checks the role."""

    def __init__(self, tokens: TokenTable):
        self.tokens = tokens

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        principal = self.tokens.authenticate(token) if token else None
        if principal is None:
            why = {None: "no token", "": "malformed authorization metadata"}.get(
                token, "unknown token"
            )
            return _refusal(
                handler,
                f"refused {method}: {why}",
                grpc.StatusCode.UNAUTHENTICATED,
                "authentication required: send a valid token (ftctl --token-file FILE, "
                "or $TUNEFLEET_TOKEN)"
                if token is None
                else "invalid token (unknown, revoked or malformed)",
            )
        short = _short_name(method)
        allowed = principal.role is Role.ADMIN or (
            method.startswith(SERVICE_PREFIX) and principal.may_call(short)
        )
        if not allowed:
            return _refusal(
                handler,
                f"refused {method} for {principal.name} (role {principal.role.value})",
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal.name} (role {principal.role.value}) may not call {short}",
            )
        return _with_principal(handler, principal)


def _refusal(handler, note: str, code: grpc.StatusCode, message: str):
    """A handler of the same kind that logs `note` (never a token) and aborts."""

    def abort(request, context):
        log.warning("%s (peer %s)", note, context.peer())
        context.abort(code, message)

    def abort_stream(request, context):
        log.warning("%s (peer %s)", note, context.peer())
        context.abort(code, message)
        yield  # pragma: no cover - abort raises

    return _rebuild(handler, unary=abort, stream=abort_stream)


def _with_principal(handler, principal: Principal):
    def wrap(behavior):
        def call(request_or_iterator, context):
            return behavior(request_or_iterator, AuthenticatedContext(context, principal))

        return call

    return _rebuild(handler, wrap=wrap)


def _rebuild(handler, *, unary=None, stream=None, wrap=None):
    """The same handler (serializers, kind) with its behavior replaced or wrapped."""
    kinds = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }
    attr, factory = kinds[(handler.request_streaming, handler.response_streaming)]
    if wrap is not None:
        behavior = wrap(getattr(handler, attr))
    else:
        behavior = stream if handler.response_streaming else unary
    return factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


# ---- logs -------------------------------------------------------------------------------


_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")


class RedactBearer(logging.Filter):
    """Replaces `Bearer <anything>` in a log record's message with `Bearer [redacted]`,
    for log lines that quote metadata or third-party errors (gRPC's own, say)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _BEARER.search(message):
            record.msg = _BEARER.sub(r"\1[redacted]", message)
            record.args = None
        return True


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    import secrets

    return secrets.token_urlsafe(32)


def tokens_entry(name: str, role: Role | str, token: str) -> str:
    """The tokens-file line for `token`, holding only its hash."""
    return json.dumps({"name": name, "role": Role(role).value, "token_sha256": hash_token(token)})

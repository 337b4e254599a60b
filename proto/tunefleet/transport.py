"""How every tunefleet process talks gRPC: channels, their options, TLS, the bearer token,
and retry backoff. Shared by the SDK, the coordinator and the worker, so none of them
imports another's room for plumbing, and the settings both ends of a connection must agree
on (message limits, keepalive pings) are written once, side by side.

Where a channel's security settings come from, first match wins:
    token     `token=` argument, $TUNEFLEET_TOKEN, the file in $TUNEFLEET_TOKEN_FILE
    TLS CA    `tls_ca=` (a PEM file), $TUNEFLEET_TLS_CA; `tls=True` alone trusts the
              system's CAs
    mTLS      `tls_cert=` + `tls_key=`, $TUNEFLEET_TLS_CERT + $TUNEFLEET_TLS_KEY

There is deliberately no command-line flag that takes a token's value: it would show in
`ps` and shell history. `--token-file` reads it from a file instead.

This module imports only grpc and the standard library: it sits between the runtime rooms
(client, coordinator, worker) and the contract, and an import-linter contract keeps it so.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import socket
import ssl
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import grpc

log = logging.getLogger(__name__)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_PORT",
    "MAX_CONCURRENT_STREAMS",
    "SDK_CHANNEL_OPTIONS",
    "SERVER_OPTIONS",
    "WORKER_CHANNEL_OPTIONS",
    "Backoff",
    "RetryPolicy",
    "ENV_TLS_CA",
    "ENV_TLS_CERT",
    "ENV_TLS_KEY",
    "ENV_TOKEN",
    "ENV_TOKEN_FILE",
    "ChannelSecurity",
    "check_pem_files",
    "check_port",
    "check_target",
    "is_loopback",
    "open_channel",
    "read_token_file",
    "split_host",
    "target_problem",
]

ENV_TOKEN = "TUNEFLEET_TOKEN"
ENV_TOKEN_FILE = "TUNEFLEET_TOKEN_FILE"
ENV_TLS_CA = "TUNEFLEET_TLS_CA"
ENV_TLS_CERT = "TUNEFLEET_TLS_CERT"
ENV_TLS_KEY = "TUNEFLEET_TLS_KEY"

# --- options: what the two ends of a connection must agree on ---------------------------

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Clients ping a quiet connection every 30 s so that a dead peer (no FIN) is noticed under
# a long event stream or long poll. The coordinator accepts pings every 5 s or slower, so
# our own clients never collect a strike (tests/security checks the two sides agree).
_KEEPALIVE_TIME_MS = 30_000
_KEEPALIVE_TIMEOUT_MS = 10_000
_MIN_PING_INTERVAL_MS = 5_000
# Per HTTP/2 connection: one client cannot open more concurrent calls than this (each
# follow or long poll holds a thread of the coordinator's pool, so a runaway client would
# starve the rest).
MAX_CONCURRENT_STREAMS = 64

_MESSAGE_LIMITS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
# gRPC's reconnect backoff grows to 120 s by default; a restarted coordinator should be
# found again within a couple of seconds (a worker's lease is only seconds long).
_FAST_RECONNECT: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

# The SDK pings only while a call is open and keeps gRPC's default cap of 2 pings without
# data: a coordinator with default settings answers faster pings (or more of them) with a
# GOAWAY "too_many_pings", which would break exactly the long streams we protect.
SDK_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    *_MESSAGE_LIMITS,
    ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 0),
    *_FAST_RECONNECT,
)

# A worker talks only to our own coordinator, which permits pings without calls: they
# notice a dead connection between long polls too.
WORKER_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    *_MESSAGE_LIMITS,
    ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    *_MESSAGE_LIMITS,
    # The coordinator pings idle connections so a follower whose machine vanished (no FIN)
    # is noticed and its stream, and the server thread it holds, are released.
    ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    # Accept client pings every 5 s or slower, with or without calls in flight; a client
    # pinging faster gets GOAWAY after gRPC's default 2 strikes instead of being tolerated
    # forever (a ping flood costs us CPU).
    ("grpc.http2.min_recv_ping_interval_without_data_ms", _MIN_PING_INTERVAL_MS),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
    # gRPC enables SO_REUSEPORT by default: a second coordinator on the same port would
    # silently share the connections (and split the jobs). Fail to bind instead.
    ("grpc.so_reuseport", 0),
)


# --- retry backoff ----------------------------------------------------------------------


class Backoff:
    """Exponential backoff: `next()` gives the pause before the next try, `reset()` after
    a success. `jitter` spreads pauses by +-that fraction so that many clients cut off by
    one coordinator restart do not all retry in the same instant."""

    def __init__(
        self,
        initial_s: float = 0.2,
        max_s: float = 2.0,
        *,
        multiplier: float = 2.0,
        jitter: float = 0.0,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self._delay = initial_s

    def next(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * self.multiplier, self.max_s)
        if self.jitter:
            delay *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return delay

    def reset(self) -> None:
        self._delay = self.initial_s


@dataclass(frozen=True)
class RetryPolicy:
    """How long the client keeps trying an unreachable coordinator.

    Attributes:
        initial_backoff_s: First pause after an UNAVAILABLE answer.
        max_backoff_s: Longest single pause.
        multiplier: Growth of the pause after each failed try (with +-20% jitter).
        max_elapsed_s: Give up a unary call (raise `Unavailable`) after this long.
        stream_max_elapsed_s: Give up reconnecting an event stream after this long
            without a connection; a restarting coordinator usually needs seconds.
    """

    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    max_elapsed_s: float = 10.0
    stream_max_elapsed_s: float = 60.0

    def delays(self) -> Iterator[float]:
        backoff = Backoff(
            self.initial_backoff_s, self.max_backoff_s, multiplier=self.multiplier, jitter=0.2
        )
        while True:
            yield backoff.next()


# --- security: token and TLS ------------------------------------------------------------


def read_token_file(path: str | os.PathLike) -> str:
    """The token in `path` (surrounding whitespace removed). Raises ValueError."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"token file {path} must hold exactly one token")
    return token


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to those (e.g. localhost)."""
    host = host.strip("[]")
    if not host:
        return False  # "" binds every interface
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


# gRPC's own name-resolver schemes ("dns:///host:port", "unix:/path"...): passed as given.
_GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


def target_problem(target: str) -> str:
    """What is wrong with `target` as a coordinator address ("" when it is HOST:PORT or a
    gRPC URI). gRPC itself accepts far more and fails late: "http://host:port" (the
    dashboard's URL, pasted) only fails name resolution, and a target without a port
    silently means 443, so every call retried "cannot reach" until its deadline, hiding
    the typo."""
    if target.startswith(_GRPC_SCHEMES):
        try:
            check_port(target)  # dns:///host:99999 too
        except ValueError as exc:
            return str(exc)
        return ""
    expected = f"expected HOST:PORT (e.g. 127.0.0.1:50051), got {target!r}"
    if "://" in target:
        scheme = target.split("://", 1)[0] + "://"
        return f"{expected}: a gRPC address, not a URL; drop {scheme!r}"
    host, sep, port = target.rpartition(":")
    if not sep or not host:
        return f"{expected}: no port"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"{expected}: the port must be a number from 1 to 65535"
    return ""


def check_target(target: str, name: str = "coordinator address") -> None:
    """Raises ValueError, naming `name`, for a target `target_problem` refuses."""
    problem = target_problem(target)
    if problem:
        raise ValueError(f"{name}: {problem}")


def split_host(target: str) -> str:
    """ "host:port" / "[::1]:port" / "dns:///host:port" -> host."""
    target = target.split("///", 1)[-1]
    host, sep, port = target.rpartition(":")
    return (host if sep and port.isdigit() else target).strip("[]")


MAX_PORT = 65535


def check_port(address: str) -> None:
    """ValueError when `address` ("host:port", "dns:///host:port") names a port above
    65535. gRPC takes such a port modulo 65536 without a word: `--listen 127.0.0.1:99999`
    served on 34463 and a client dialled 34463, so a typo became a silent wrong port."""
    port = address.split("///", 1)[-1].rpartition(":")[2]
    if port.isdigit() and int(port) > MAX_PORT:
        raise ValueError(f"{address}: port {port} is out of range (0-{MAX_PORT})")


def check_pem_files(
    *, cert: Path | None = None, key: Path | None = None, ca: Path | None = None
) -> None:
    """ValueError naming the file when a certificate chain and its key, or a CA bundle,
    cannot be used. gRPC finds out only when it connects or binds, and then says no more
    than that the handshake could not start or the port could not be added, which read as
    "cannot reach coordinator" and "address in use?"."""

    def encrypted() -> bytes:
        raise ValueError("the key is encrypted; gRPC needs it without a passphrase")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(cert, key, password=encrypted)
        except (ssl.SSLError, ValueError) as exc:
            if isinstance(exc, ssl.SSLError):  # OpenSSL's reason, e.g. KEY_VALUES_MISMATCH
                why = exc.reason if exc.reason else "not PEM, or the two files swapped"
            else:
                why = str(exc)
            raise ValueError(
                f"{cert} / {key}: not a PEM certificate chain and the private key it was "
                f"issued for ({why})"
            ) from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except ssl.SSLError as exc:
            raise ValueError(f"{ca}: not a PEM CA certificate ({exc.reason or exc})") from None


@dataclass(frozen=True)
class ChannelSecurity:
    """How a channel authenticates: TLS settings and the bearer token.

    Attributes:
        token: Sent as `authorization: Bearer <token>` on every call. Never shown by repr.
        tls: Use TLS. Implied by `ca_file` or `cert_file`.
        ca_file: PEM bundle of the CA(s) that signed the coordinator's certificate;
            None with `tls` = the system's trusted CAs.
        cert_file, key_file: This side's certificate and key, for mutual TLS.
        server_name: Check the coordinator's certificate for this name instead of the
            target's host (e.g. when dialing an IP the certificate does not list).
    """

    token: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    @classmethod
    def resolve(
        cls,
        *,
        token: str | None = None,
        token_file: str | os.PathLike | None = None,
        tls: bool | None = None,
        tls_ca: str | os.PathLike | None = None,
        tls_cert: str | os.PathLike | None = None,
        tls_key: str | os.PathLike | None = None,
        server_name: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ChannelSecurity:
        """Arguments first, then the environment (see the module docstring)."""
        env = os.environ if environ is None else environ
        if token is None and token_file is not None:
            token = read_token_file(token_file)
        if token is None and env.get(ENV_TOKEN):
            token = env[ENV_TOKEN].strip()
        if token is None and env.get(ENV_TOKEN_FILE):
            token = read_token_file(env[ENV_TOKEN_FILE])
        ca = tls_ca or env.get(ENV_TLS_CA) or None
        cert = tls_cert or env.get(ENV_TLS_CERT) or None
        key = tls_key or env.get(ENV_TLS_KEY) or None
        if bool(cert) != bool(key):
            raise ValueError("give both a TLS client certificate and its key, or neither")
        use_tls = bool(ca or cert) if tls is None else tls
        if (ca or cert) and not use_tls:
            raise ValueError("TLS files given but tls=False")
        return cls(
            token=token or None,
            tls=use_tls,
            ca_file=Path(ca) if ca else None,
            cert_file=Path(cert) if cert else None,
            key_file=Path(key) if key else None,
            server_name=server_name,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """ValueError naming the file for unreadable or unusable PEM files."""

        def read(path: Path | None) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror}") from None

        ca, key, cert = read(self.ca_file), read(self.key_file), read(self.cert_file)
        check_pem_files(cert=self.cert_file, key=self.key_file, ca=self.ca_file)
        return grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=key,
            certificate_chain=cert,
        )


def open_channel(
    target: str,
    options: Iterable[tuple[str, int | str]] = (),
    security: ChannelSecurity | None = None,
) -> grpc.Channel:
    """A channel to `target` with `security` applied (plaintext, no token when None).
    Raises ValueError for a target that is not HOST:PORT (see `check_target`)."""
    check_target(target)
    security = security or ChannelSecurity()
    options = list(options)
    if security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    if security.tls:
        channel = grpc.secure_channel(target, security.channel_credentials(), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if not security.token:
        return channel
    if not security.tls and not is_loopback(split_host(target)):
        log.warning(
            "sending a token to %s without TLS: anyone on the network path can read it "
            "(give the coordinator's CA with --tls-ca or %s)",
            target,
            ENV_TLS_CA,
        )
    # Metadata added by an interceptor rather than call credentials: gRPC refuses call
    # credentials on plaintext channels, and loopback development without TLS is legitimate.
    return grpc.intercept_channel(channel, _BearerToken(security.token))


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: tuple | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:
        return "_BearerToken([redacted])"

    def _details(self, details: grpc.ClientCallDetails) -> _ClientCallDetails:
        metadata = [m for m in (details.metadata or ()) if m[0].lower() != "authorization"]
        return _ClientCallDetails(
            details.method,
            details.timeout,
            (*metadata, self._header),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

"""Channels to the coordinator: TLS when a CA (or TLS) is asked for, and a bearer token on
every call, unary and streaming. Used by the SDK and by the worker daemon.

Where the settings come from, first match wins:
    token     `token=` argument, $TUNEFLEET_TOKEN, the file in $TUNEFLEET_TOKEN_FILE
    TLS CA    `tls_ca=` (a PEM file), $TUNEFLEET_TLS_CA; `tls=True` alone trusts the
              system's CAs
    mTLS      `tls_cert=` + `tls_key=`, $TUNEFLEET_TLS_CERT + $TUNEFLEET_TLS_KEY

There is deliberately no command-line flag that takes a token's value: it would show in
`ps` and shell history. `--token-file` reads it from a file instead.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import grpc

log = logging.getLogger(__name__)

__all__ = [
    "ENV_TLS_CA",
    "ENV_TLS_CERT",
    "ENV_TLS_KEY",
    "ENV_TOKEN",
    "ENV_TOKEN_FILE",
    "ChannelSecurity",
    "is_loopback",
    "open_channel",
    "read_token_file",
]

ENV_TOKEN = "TUNEFLEET_TOKEN"
ENV_TOKEN_FILE = "TUNEFLEET_TOKEN_FILE"
ENV_TLS_CA = "TUNEFLEET_TLS_CA"
ENV_TLS_CERT = "TUNEFLEET_TLS_CERT"
ENV_TLS_KEY = "TUNEFLEET_TLS_KEY"


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


def split_host(target: str) -> str:
    """ "host:port" / "[::1]:port" / "dns:///host:port" -> host."""
    target = target.split("///", 1)[-1]
    host, sep, port = target.rpartition(":")
    return (host if sep and port.isdigit() else target).strip("[]")


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
        def read(path: Path | None) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


def open_channel(
    target: str,
    options: Iterable[tuple[str, int | str]] = (),
    security: ChannelSecurity | None = None,
) -> grpc.Channel:
    """A channel to `target` with `security` applied (plaintext, no token when None)."""
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

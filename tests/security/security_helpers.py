"""Throwaway PKI and token files for the security tests, made with `cryptography`."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc, spec_pb2

RPC_TIMEOUT = 10.0


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(cert, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass
class CertificateAuthority:
    name: str
    key: object
    cert: x509.Certificate
    cert_file: Path

    @classmethod
    def create(cls, folder: Path, name: str) -> CertificateAuthority:
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert, _write_cert(cert, folder / f"{name}.pem"))

    def issue(self, folder: Path, name: str, *, server: bool) -> tuple[Path, Path]:
        """(cert file, key file) for a server (127.0.0.1 and localhost) or a client."""
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return (
            _write_cert(cert, folder / f"{name}.crt.pem"),
            _write_key(key, folder / f"{name}.key.pem"),
        )


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create(folder, "test-ca")
    server_cert, server_key = ca.issue(folder, "coordinator", server=True)
    client_cert, client_key = ca.issue(folder, "worker-1", server=False)
    rogue = CertificateAuthority.create(folder, "rogue-ca")
    rogue_cert, rogue_key = rogue.issue(folder, "intruder", server=False)
    return Pki(
        ca.cert_file,
        server_cert,
        server_key,
        client_cert,
        client_key,
        rogue.cert_file,
        rogue_cert,
        rogue_key,
    )


# Tokens by name; the tokens file the coordinator reads holds only their hashes (and one
# plaintext entry, to cover that form too).
TOKENS = {
    "root": "admin-token-0123456789abcdef",
    "alice": "alice-token-0123456789abcdef",
    "bob": "bob-token-0123456789abcdef012",
    "worker-1": "worker-token-0123456789abcdef",
}
ROLES = {"root": "admin", "alice": "user", "bob": "user", "worker-1": "worker"}


def write_tokens_file(path: Path) -> Path:
    import json

    from tunefleet.coordinator.auth import hash_token

    entries = [
        {"name": name, "role": ROLES[name], "token_sha256": hash_token(token)}
        for name, token in TOKENS.items()
        if name != "bob"
    ]
    entries.append({"name": "bob", "role": "user", "token": TOKENS["bob"]})
    path.write_text(json.dumps(entries, indent=2))
    path.chmod(0o600)
    return path


def make_spec(job_name: str = "job", **model) -> spec_pb2.JobSpec:
    """A valid spec (the coordinators here run with check_paths=False); `model` sets
    model fields (source="job", job=..., name="" chains from another job)."""
    spec = spec_pb2.JobSpec(
        name=job_name,
        model=spec_pb2.ModelSpec(source="hf", name="/models/tiny-bert"),
        data=spec_pb2.DataSpec(source="csv", train="/data/train.csv", eval="/data/eval.csv"),
    )
    if model.get("source") == "job":
        spec.model.Clear()
    for key, value in model.items():
        setattr(spec.model, key, value)
    return spec


class Caller:
    """Raw stubs with a fixed token (or none), for asserting status codes exactly."""

    def __init__(self, address: str, token: str | None = None, credentials=None):
        if credentials is not None:
            self.channel = grpc.secure_channel(address, credentials)
        else:
            self.channel = grpc.insecure_channel(address)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def call(self, method: str, request):
        return getattr(self.stub, method)(request, timeout=RPC_TIMEOUT, metadata=self.metadata)

    def stream(self, job_id: str, *, follow: bool = False) -> list:
        request = coordinator_pb2.StreamEventsRequest(job_id=job_id, follow=follow)
        return list(self.stub.StreamEvents(request, timeout=RPC_TIMEOUT, metadata=self.metadata))

    def submit(self, spec=None, key: str = ""):
        request = coordinator_pb2.SubmitJobRequest(spec=spec or make_spec(), idempotency_key=key)
        return self.call("SubmitJob", request)

    def close(self) -> None:
        self.channel.close()


def code_of(fn) -> grpc.StatusCode:
    """The status code `fn()` fails with (AssertionError if it succeeds)."""
    try:
        fn()
    except grpc.RpcError as e:
        return e.code()
    raise AssertionError("the call succeeded")

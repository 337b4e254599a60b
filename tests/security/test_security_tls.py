"""TLS and mutual TLS end to end, with a throwaway CA made in the test session."""

from __future__ import annotations

import threading

import grpc
import pytest
from security_helpers import RPC_TIMEOUT, TOKENS, code_of

from tunefleet.client import Client, Unavailable
from tunefleet.client.client import RetryPolicy
from tunefleet.coordinator.auth import TokenTable
from tunefleet.coordinator.server import ServerTls
from tunefleet.transport import ChannelSecurity, open_channel
from tunefleet.v1 import coordinator_pb2, coordinator_pb2_grpc
from tunefleet.worker.daemon import WorkerDaemon

QUICK = RetryPolicy(max_elapsed_s=0.5, initial_backoff_s=0.05)
SPEC = {
    "name": "tls",
    "model": {"source": "hf", "name": "/m"},
    "data": {"source": "csv", "train": "/t.csv"},
}


@pytest.fixture
def tls_server(start, pki, tokens_file):
    tls = ServerTls(pki.server_cert, pki.server_key)
    return start(tls=tls, tokens=TokenTable.from_file(tokens_file))


@pytest.fixture
def mtls_server(start, pki, tokens_file):
    tls = ServerTls(pki.server_cert, pki.server_key, client_ca_file=pki.ca)
    return start(tls=tls, tokens=TokenTable.from_file(tokens_file))


def test_client_talks_to_a_tls_coordinator_with_its_ca(tls_server, pki):
    with Client(tls_server.address, token=TOKENS["alice"], tls_ca=pki.ca) as client:
        job = client.submit(SPEC, check_paths=False)
        assert [j.id for j in client.list()] == [job.id]
        events = list(client.events(job.id, follow=False))  # streaming over TLS
        assert [e.seq for e in events] == [1]
        assert client.cancel(job.id).state.value == "CANCELLED"
    # "localhost" is in the certificate too.
    port = tls_server.port
    with Client(f"localhost:{port}", token=TOKENS["alice"], tls_ca=pki.ca) as client:
        assert len(client.list()) == 1


def test_tls_settings_from_the_environment(tls_server, pki, monkeypatch):
    monkeypatch.setenv("TUNEFLEET_TLS_CA", str(pki.ca))
    monkeypatch.setenv("TUNEFLEET_TOKEN", TOKENS["root"])
    with Client(tls_server.address) as client:
        assert client.security.tls and client.list() == []


def test_tls_coordinator_refuses_plaintext_and_untrusted_clients(tls_server, pki):
    plain = Client(tls_server.address, token=TOKENS["alice"], retry=QUICK, tls=False)
    with plain, pytest.raises(Unavailable):
        plain.list()
    # A client trusting another CA does not accept the coordinator's certificate.
    fooled = Client(tls_server.address, token=TOKENS["alice"], tls_ca=pki.rogue_ca, retry=QUICK)
    with fooled, pytest.raises(Unavailable):
        fooled.list()


def test_mtls_rejects_a_worker_without_a_client_certificate(mtls_server, pki):
    register = coordinator_pb2.RegisterWorkerRequest(worker_id="w-1")

    def register_with(security: ChannelSecurity) -> None:
        channel = open_channel(mtls_server.address, (), security)
        try:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            stub.RegisterWorker(register, timeout=RPC_TIMEOUT)
        finally:
            channel.close()

    token = TOKENS["worker-1"]
    no_cert = ChannelSecurity(token=token, tls=True, ca_file=pki.ca)
    assert code_of(lambda: register_with(no_cert)) == grpc.StatusCode.UNAVAILABLE
    rogue = ChannelSecurity(
        token=token,
        tls=True,
        ca_file=pki.ca,
        cert_file=pki.rogue_client_cert,
        key_file=pki.rogue_client_key,
    )
    assert code_of(lambda: register_with(rogue)) == grpc.StatusCode.UNAVAILABLE
    assert not mtls_server.scheduler.list_workers()

    # The real worker daemon, with the CA's client certificate and its token, gets in.
    security = ChannelSecurity.resolve(
        token=token, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key
    )
    daemon = WorkerDaemon(mtls_server.address, worker_id="w-mtls", gpus=0, security=security)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        deadline = threading.Event()
        for _ in range(100):
            if [w.id for w in mtls_server.scheduler.list_workers()] == ["w-mtls"]:
                break
            deadline.wait(0.05)
        assert [w.id for w in mtls_server.scheduler.list_workers()] == ["w-mtls"]
    finally:
        daemon.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_server_tls_files_must_be_readable(start, pki, tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        start(tls=ServerTls(tmp_path / "missing.pem", pki.server_key))
    with pytest.raises(ValueError, match="both"):
        ChannelSecurity.resolve(tls_cert=pki.client_cert, environ={})


def _ftctl_error(capsys, address: str, *flags: str) -> str:
    from tunefleet.client.cli import main

    code = main(["--coordinator", address, "--connect-timeout", "1", *flags, "jobs"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_ftctl_says_which_tls_setting_disagrees_instead_of_start_one(
    capsys, start, pki, tokens_file, monkeypatch, tmp_path
):
    """Each of these said "cannot reach coordinator ... Start one on this machine with
    `ftctl up`" although a coordinator answered: only the TLS settings disagreed."""
    for name in ("TUNEFLEET_TLS_CA", "TUNEFLEET_TLS_CERT", "TUNEFLEET_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / "alice.token"
    token.write_text(TOKENS["alice"])
    tokens = TokenTable.from_file(tokens_file)
    # On every interface, so that 127.0.0.2 (a name the certificate lacks) reaches it too.
    tls = start("0.0.0.0:0", tls=ServerTls(pki.server_cert, pki.server_key), tokens=tokens)
    address, auth = f"127.0.0.1:{tls.port}", ("--token-file", str(token))

    line = _ftctl_error(capsys, address, *auth)  # plaintext
    assert "closed the connection" in line and "--tls-ca" in line and "ftctl up" not in line
    line = _ftctl_error(capsys, address, *auth, "--tls-ca", str(pki.rogue_ca))
    assert "not signed by a CA this client trusts" in line, line
    line = _ftctl_error(capsys, f"127.0.0.2:{tls.port}", *auth, "--tls-ca", str(pki.ca))
    assert "does not name 127.0.0.2" in line, line

    plain = start(tokens=tokens)
    line = _ftctl_error(capsys, plain.address, *auth, "--tls-ca", str(pki.ca))
    assert "does not speak TLS" in line, line

    mtls = start(tls=ServerTls(pki.server_cert, pki.server_key, pki.ca), tokens=tokens)
    line = _ftctl_error(capsys, mtls.address, *auth, "--tls-ca", str(pki.ca))
    assert "--tls-client-ca" in line and "TUNEFLEET_TLS_CERT" in line, line

    # Nothing listening at all: still "start one".
    plain.stop(grace=0)
    assert "ftctl up" in _ftctl_error(capsys, plain.address, *auth)


def test_unusable_tls_material_is_named_not_reported_as_a_busy_port(start, pki, tmp_path):
    """Each of these failed as "cannot listen on 127.0.0.1:0 (address in use?)": gRPC
    only says the port could not be added."""
    placeholder = tmp_path / "tls.crt"  # deploy/kubernetes/secrets.yaml, not yet replaced
    placeholder.write_text("REPLACE_ME (PEM certificate chain)")
    cases = [
        (ServerTls(placeholder, pki.server_key), "not PEM, or the two files swapped"),
        (ServerTls(pki.server_key, pki.server_cert), "not PEM, or the two files swapped"),
        (ServerTls(pki.server_cert, pki.client_key), "KEY_VALUES_MISMATCH"),
        (ServerTls(pki.server_cert, pki.server_key, placeholder), "--tls-client-ca"),
    ]
    for tls, reason in cases:
        with pytest.raises(ValueError) as info:
            start(tls=tls)
        assert reason in str(info.value) and "address in use" not in str(info.value)
        assert str(tls.client_ca_file or tls.key_file) in str(info.value)
    start(tls=ServerTls(pki.server_cert, pki.server_key, pki.ca)).stop(grace=0)


def test_unusable_client_tls_files_are_named_before_any_connection(capsys, pki, tmp_path):
    """A CA file that is not PEM, or a client certificate with another's key: the SDK
    and ftctl said "cannot reach coordinator ... start one", the worker retried "Failed to
    create security handshaker" for ever."""
    from tunefleet.client import ValidationError
    from tunefleet.client.cli import main
    from tunefleet.worker.__main__ import build_parser
    from tunefleet.worker.command_line import WorkerFlagError, daemon_from_args

    garbage = tmp_path / "ca.pem"
    garbage.write_text("REPLACE_ME (PEM CA certificate)")
    with pytest.raises(ValidationError, match="not a PEM CA certificate"):
        Client("127.0.0.1:1", tls_ca=garbage)
    code = main(["--coordinator", "127.0.0.1:1", "--tls-ca", str(garbage), "workers"])
    err = capsys.readouterr().err
    assert (
        code == 1
        and err == f"error: {garbage}: not a PEM CA certificate (NO_CERTIFICATE_OR_CRL_FOUND)\n"
    )
    flags = ["--coordinator", "127.0.0.1:1", "--artifacts", str(tmp_path / "a"), "--gpus", "0"]
    mismatched = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
    args = build_parser().parse_args([*flags, *mismatched, "--tls-key", str(pki.server_key)])
    with pytest.raises(WorkerFlagError, match="KEY_VALUES_MISMATCH"):
        daemon_from_args(args)


def test_submit_hints_repeat_the_token_file_and_ca_they_need(
    capsys, start, pki, tokens_file, tmp_path, monkeypatch
):
    """The follow/status/cancel lines after a submit named only --coordinator: copied as
    printed, each answered "authentication required" (or failed the TLS handshake)."""
    from tunefleet.client.cli import main

    for name in ("TUNEFLEET_TLS_CA", "TUNEFLEET_TOKEN", "TUNEFLEET_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / "my tokens" / "alice.token"
    token.parent.mkdir()
    token.write_text(TOKENS["alice"])
    tls = start(
        tls=ServerTls(pki.server_cert, pki.server_key), tokens=TokenTable.from_file(tokens_file)
    )
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: hinted\nmodel: {source: torchvision, name: resnet18, init: random, num_labels: 2}\n"
        "data: {source: torchvision, name: CIFAR10, root: /nowhere}\n"
    )
    flags = ["--token-file", str(token), "--tls-ca", str(pki.ca)]
    code = main(["--coordinator", tls.address, *flags, "submit", str(job), "--no-check-paths"])
    out = capsys.readouterr().out
    assert code == 0, out
    for line in [line for line in out.splitlines() if "ftctl " in line]:
        assert f"--token-file '{token}'" in line and f"--tls-ca {pki.ca}" in line, line

"""Why `ftctl` got no answer from a coordinator, in words: none is listening (start one,
or point at yours), or one answered but this client's TLS settings and its disagree (which
setting to change; "start one" would be wrong advice then)."""

from __future__ import annotations

from tunefleet.defaults import ENV_COORDINATOR
from tunefleet.transport import split_host

# What gRPC's last connection error says when this client's TLS settings and the
# coordinator's disagree (a coordinator is there: "start one" would be wrong advice).
_TLS_MISMATCHES = (
    (
        "CERTIFICATE_VERIFY_FAILED",
        "its TLS certificate is not signed by a CA this client trusts; give the CA that "
        "signed it with --tls-ca or $TUNEFLEET_TLS_CA",
    ),
    (
        "Hostname Verification",
        "its TLS certificate does not name {host}; dial a name the certificate lists",
    ),
    (
        "WRONG_VERSION_NUMBER",
        "it does not speak TLS; drop --tls-ca and $TUNEFLEET_TLS_CA for it",
    ),
)


def tls_mismatch(target: str, details: str, *, tls: bool) -> str | None:
    """What a failed connection's details say about TLS, in words; None when nothing.
    "Socket closed" at once is what a TLS coordinator does to a plaintext client, and what
    one started with --tls-client-ca does to a client without a certificate it trusts."""
    for marker, advice in _TLS_MISMATCHES:
        if marker in details:
            return advice.format(host=split_host(target))
    if "Socket closed" in details:
        if tls:
            return (
                "it closed the TLS connection; a coordinator started with --tls-client-ca "
                "does that to a client without a certificate it trusts "
                "($TUNEFLEET_TLS_CERT and $TUNEFLEET_TLS_KEY)"
            )
        return (
            "it closed the connection; a coordinator that serves TLS does that to a "
            "plaintext client: give its CA with --tls-ca or $TUNEFLEET_TLS_CA"
        )
    return None


def unreachable_message(target: str, details: str = "", *, tls: bool = False) -> str:
    """What to do when no coordinator answers: start one, or point at the right one; or,
    when one answered but TLS settings disagree, which setting to change."""
    mismatch = tls_mismatch(target, details, tls=tls)
    if mismatch:
        return f"cannot connect to the coordinator at {target}: {mismatch}"
    return (
        f"cannot reach coordinator at {target}. Start one on this machine with `ftctl up` "
        f"(or `ftctl server`), or point ftctl at yours with --coordinator HOST:PORT or "
        f"${ENV_COORDINATOR}"
    )

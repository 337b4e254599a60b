"""The standard gRPC health service (grpc.health.v1.Health) on the coordinator's port, for
Kubernetes gRPC probes, load balancers and `grpc_health_probe`; plus a tiny probe client.

    python -m tunefleet.coordinator.health 127.0.0.1:50051      # exit 0 when SERVING

The overall status ("") and the Coordinator service report SERVING while the server runs
and NOT_SERVING from the moment it starts shutting down, so a readiness probe takes the
pod out of rotation before connections are refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tunefleet.transport import ChannelSecurity, open_channel
from tunefleet.v1 import coordinator_pb2

__all__ = ["COORDINATOR_SERVICE", "HEALTH_METHOD_PREFIX", "add_health_service", "check"]

COORDINATOR_SERVICE = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
# Probes carry no credentials: an auth interceptor must let these methods through.
HEALTH_METHOD_PREFIX = f"/{health.SERVICE_NAME}/"


def add_health_service(server: grpc.Server) -> health.HealthServicer:
    """Registers the health service on `server`, reporting SERVING. Call the returned
    servicer's `enter_graceful_shutdown()` when the server begins to stop."""
    servicer = health.HealthServicer(experimental_non_blocking=True)
    for service in ("", COORDINATOR_SERVICE):
        servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def check(
    address: str,
    *,
    service: str = "",
    timeout: float = 5.0,
    tls_ca: Path | None = None,
    server_name: str | None = None,
) -> str:
    """The serving status name of `service` at `address` ("SERVING", "NOT_SERVING"...).

    TLS settings come from the arguments, else from the SDK's environment variables
    ($TUNEFLEET_TLS_CA, and $TUNEFLEET_TLS_CERT/KEY when the coordinator wants client
    certificates), so a container's HEALTHCHECK works unchanged when TLS is turned on.
    `server_name` overrides the name checked in the certificate.

    Raises grpc.RpcError when the server cannot be reached or does not know `service`,
    ValueError for unreadable TLS files.
    """
    security = ChannelSecurity.resolve(tls_ca=tls_ca, server_name=server_name)
    with open_channel(address, security=security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunefleet.coordinator.health",
        description="Exit 0 if the coordinator at ADDRESS reports SERVING, 1 otherwise.",
    )
    parser.add_argument("address", metavar="HOST:PORT")
    parser.add_argument("--service", default="", help="service name (default: the server)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S")
    parser.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        help="CA to trust: use TLS (default: $TUNEFLEET_TLS_CA)",
    )
    parser.add_argument(
        "--server-name", metavar="NAME", help="name to verify in the server's certificate"
    )
    args = parser.parse_args(argv)
    try:
        status = check(
            args.address,
            service=args.service,
            timeout=args.timeout,
            tls_ca=args.tls_ca,
            server_name=args.server_name,
        )
    except grpc.RpcError as exc:
        print(f"{args.address}: {exc.code().name} {exc.details()}", file=sys.stderr)
        return 1
    except ValueError as exc:  # unreadable TLS files
        print(str(exc), file=sys.stderr)
        return 1
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())

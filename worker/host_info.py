"""What a worker knows about its host: its GPUs, its address on the route to the
coordinator (where the other members of a multi-node job reach it) and the network
interface that holds that address. Kept apart from the daemon, which re-exports them."""

from __future__ import annotations

import os
import socket

from tunefleet.transport import split_host

__all__ = ["collective_env", "detect_gpus", "interface_of", "route_address"]

# The variables torch's gloo and NCCL backends read to pick the interface their ranks
# listen and connect on.
SOCKET_IFNAME_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def detect_gpus() -> tuple[int, str]:
    """(count, name of GPU 0) from torch if it is installed; (0, "") otherwise.

    Imported here, not at module level: the daemon itself must not pay torch's import
    time, and the base install (SDK, coordinator) has no torch at all.
    """
    try:
        import torch

        count = torch.cuda.device_count()
        return count, (torch.cuda.get_device_name(0) if count else "")
    except Exception:  # no torch, or a broken CUDA setup: run CPU jobs
        return 0, ""


def route_address(coordinator: str) -> str:
    """This host's IP address on its route to the coordinator (127.0.0.1 for a coordinator
    on loopback): where the other workers of a multi-node job, which reach the same
    coordinator, most likely reach us too. "" when unknown: the coordinator then takes the
    address our connection comes from."""
    host = split_host(coordinator)
    port = coordinator.rpartition(":")[2]
    # IPv4 first: accelerate joins --main_process_ip and the port as "IP:PORT", which an
    # IPv6 address (colons, no brackets) makes ambiguous.
    for family in (socket.AF_INET, socket.AF_UNSPEC):
        try:
            info = socket.getaddrinfo(
                host, int(port) if port.isdigit() else 0, family, socket.SOCK_DGRAM
            )[0]
            with socket.socket(info[0], socket.SOCK_DGRAM) as probe:
                probe.connect(info[4])  # UDP: picks the route, sends nothing
                return probe.getsockname()[0]
        except (OSError, IndexError):
            continue
    return ""


def interface_of(address: str) -> str:
    """The name of this host's network interface that holds `address` (an IP, or a name
    that resolves to one of ours); "" when none does (an address behind NAT, a name that
    does not resolve) or psutil is missing."""
    try:
        import psutil  # the worker extra (and accelerate) install it
    except ImportError:
        return ""
    try:
        wanted = {info[4][0] for info in socket.getaddrinfo(address, None)}
    except (OSError, UnicodeError):
        return ""
    families = (socket.AF_INET, socket.AF_INET6)
    for name, addresses in psutil.net_if_addrs().items():
        for found in addresses:
            if found.family in families and found.address.split("%")[0] in wanted:
                return name
    return ""


def collective_env(address: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the training processes of a multi-node job: gloo and NCCL listen on
    the interface that holds `address` (the worker's --address, where the other members
    reach it). Without it gloo takes the address the host's *name* resolves to, which is
    often 127.0.1.1 or 127.0.0.1 (Debian's /etc/hosts, containers): a rank then tells the
    others to connect to its loopback, and the gang fails with "Connection refused,
    remote=[127.0.0.1]". A variable already set in the worker's environment is left as is.
    """
    environ = os.environ if environ is None else environ
    interface = interface_of(address) if address else ""
    if not interface:
        return {}
    return {name: interface for name in SOCKET_IFNAME_VARIABLES if name not in environ}

"""What a worker knows about its host: its GPUs, and its address on the route to the
coordinator (where the other members of a multi-node job reach it). Kept apart from the
daemon, which re-exports both."""

from __future__ import annotations

import socket

from tunefleet.transport import split_host

__all__ = ["detect_gpus", "route_address"]


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

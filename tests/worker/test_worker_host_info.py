"""Which network interface a multi-node job's ranks listen on: the one holding the worker's
--address (tests/cluster/test_gang_hosts.py runs a gang across hosts with it)."""

from __future__ import annotations

import sys

import pytest

from tunefleet.worker.host_info import collective_env, interface_of

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="loopback is named lo on Linux")


def test_the_interface_holding_an_address_is_found_and_a_foreign_address_has_none():
    assert interface_of("127.0.0.1") == "lo"
    assert interface_of("localhost") == "lo"
    assert interface_of("192.0.2.1") == ""  # TEST-NET-1: on no interface of ours
    assert interface_of("no-such-host.invalid") == ""


def test_gloo_and_nccl_are_pointed_at_it_unless_the_worker_was_told_otherwise():
    assert collective_env("127.0.0.1", {}) == {
        "GLOO_SOCKET_IFNAME": "lo",
        "NCCL_SOCKET_IFNAME": "lo",
    }
    assert collective_env("127.0.0.1", {"GLOO_SOCKET_IFNAME": "eth1"}) == {
        "NCCL_SOCKET_IFNAME": "lo"
    }
    assert collective_env("192.0.2.1", {}) == {}
    assert collective_env("", {}) == {}

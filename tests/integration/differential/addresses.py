"""Addresses the cases need: a port that refuses connections, and this machine's own address."""

from __future__ import annotations

import socket


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening: bound and closed again without listen(), so
    a connect to it is refused (another process could take it later, which no test here does
    within a run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_address() -> str:
    """The machine's own (non-loopback) IPv4 address: the source of its default route.

    Envoy, with use_remote_address and a loopback peer, appends this address (its node's
    address) to x-forwarded-for instead of 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.254", 9))       # a UDP connect sends no packet
        return s.getsockname()[0]

"""The local address of an accepted connection, read once per listener (worker/listener.py
`local_address`) when the socket is bound to one address: it must be what the connection's own
socket says (getsockname), which a listener on 0.0.0.0 or :: cannot know, so it asks per
connection there (None)."""

from __future__ import annotations

import socket
import types

import pytest

from baton.worker.listener import Listener


def _listener(family: int, host: str) -> tuple:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(4)
    worker = types.SimpleNamespace(loop=None, overload=types.SimpleNamespace(holding=False))
    spec = {"name": "l", "address": host, "port": sock.getsockname()[1], "stat_name": "l",
            "tcp_proxy": {"stat_prefix": "t", "cluster": "c"}}
    return Listener(worker, spec, sock.detach()), family


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"),
                                          (socket.AF_INET6, "::1")])
def test_a_listener_on_one_address_knows_its_connections_local_address(family, host):
    listener, family = _listener(family, host)
    try:
        with socket.create_connection((host, listener.sock.getsockname()[1])):
            accepted, _ = listener.sock._accept()
            with socket.socket(family, socket.SOCK_STREAM, 0, accepted) as conn:
                assert listener.local_address == conn.getsockname()[:2]
    finally:
        listener.close()


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")])
def test_a_wildcard_listener_leaves_it_to_each_connection(family, host):
    listener, _ = _listener(family, host)
    try:
        assert listener.local_address is None
    finally:
        listener.close()


def test_a_transparent_listener_leaves_it_to_each_connection():
    """TPROXY: an accepted connection's local address is its original destination, not the
    address the listener is bound to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    worker = types.SimpleNamespace(loop=None, overload=types.SimpleNamespace(holding=False))
    spec = {"name": "l", "address": "127.0.0.1", "port": sock.getsockname()[1], "stat_name": "l",
            "transparent": True, "tcp_proxy": {"stat_prefix": "t", "cluster": "c"}}
    listener = Listener(worker, spec, sock.detach())
    try:
        assert listener.local_address is None
    finally:
        listener.close()

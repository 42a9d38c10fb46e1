"""A clear-text HTTP listener's accepted descriptors go to uvloop as AcceptedSockets
(worker/listener.py), not socket objects: no getsockname, setblocking or TCP_NODELAY of ours
per connection. What uvloop's transport then does must still hold: the descriptor is
non-blocking with TCP_NODELAY, the transport serves it, and it is closed exactly once, by
libuv once the transport holds it, by close() before that."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import types

import pytest
import uvloop

from baton.worker.listener import AcceptedSocket, Listener
from baton.worker.main import Worker
from tests.fd_accounting import fd_is_open


def _accepted(server: socket.socket) -> tuple[socket.socket, int]:
    client = socket.create_connection(server.getsockname())
    fd, _ = server._accept()
    return client, fd


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)
        self.transport.close()


def test_uvloop_serves_an_accepted_socket_and_closes_its_descriptor_once():
    loop = uvloop.new_event_loop()
    server = socket.create_server(("127.0.0.1", 0))
    client, fd = _accepted(server)
    accepted = AcceptedSocket(socket.AF_INET, fd)
    worker = types.SimpleNamespace(id=0, connections={}, loop=loop)
    conn = types.SimpleNamespace(id=1, transport=None)
    protocol = Echo()
    try:
        Worker._accepting_http(worker, loop.connect_accepted_socket(lambda: protocol, accepted),
                               conn, accepted)
        assert accepted.attached
        loop.run_until_complete(asyncio.sleep(0))
        # What our own setblocking and setsockopt did before, uvloop's transport does.
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        probe = socket.socket(fileno=os.dup(fd))
        try:
            assert probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            probe.close()
        client.sendall(b"ping")
        loop.run_until_complete(asyncio.sleep(0.05))
        client.settimeout(5)
        assert client.recv(16) == b"ping"
        loop.run_until_complete(asyncio.sleep(0))
        assert not fd_is_open(fd) and accepted.fd == -1
        accepted.close()            # what _http_not_started does: nothing more to close
    finally:
        client.close()
        server.close()
        loop.close()


def test_closing_an_accepted_socket_no_transport_took_closes_its_descriptor():
    server = socket.create_server(("127.0.0.1", 0))
    client, fd = _accepted(server)
    try:
        accepted = AcceptedSocket(socket.AF_INET, fd)
        accepted.close()
        assert not fd_is_open(fd)
        accepted.close()            # twice: the descriptor number is not closed again
    finally:
        client.close()
        server.close()


def _listener(loop, **spec_extra) -> Listener:
    sock = socket.create_server(("127.0.0.1", 0))
    worker = types.SimpleNamespace(loop=loop, overload=types.SimpleNamespace(holding=False),
                                   stats=None)
    spec = {"name": "l", "address": "127.0.0.1", "port": sock.getsockname()[1],
            "stat_name": "l", "tcp_proxy": {"stat_prefix": "t", "cluster": "c"}, **spec_extra}
    return Listener(worker, spec, sock.detach())


@pytest.mark.parametrize("loop_factory, spec_extra", [
    (uvloop.new_event_loop, {}),                                    # tcp_proxy
    (uvloop.new_event_loop, {"original_dst": True}),
    (asyncio.new_event_loop, {}),
], ids=["tcp-proxy", "original-dst", "asyncio-loop"])
def test_only_plain_http_on_uvloop_takes_accepted_sockets(loop_factory, spec_extra):
    loop = loop_factory()
    listener = _listener(loop, **spec_extra)
    try:
        assert listener.uvloop == (loop_factory is uvloop.new_event_loop)
        assert not listener.plain_http
    finally:
        listener.close()
        loop.close()


def test_a_transport_made_without_a_wait_holds_the_descriptor():
    """Should uvloop's coroutine finish at its first step, the transport it made holds the
    descriptor: close() must not close it under libuv."""
    server = socket.create_server(("127.0.0.1", 0))
    client, fd = _accepted(server)
    accepted = AcceptedSocket(socket.AF_INET, fd)

    async def made_at_once():
        return None

    try:
        Worker._accepting_http(types.SimpleNamespace(id=0), made_at_once(),
                               types.SimpleNamespace(id=1), accepted)
        assert accepted.attached
        accepted.close()
        assert fd_is_open(fd)
    finally:
        os.close(fd)
        client.close()
        server.close()


def _http_listener(tmp_path, loop, tls=False, **spec_extra) -> Listener:
    """A real listener of the express test's bootstrap (one HTTP chain: clear text, or HTTPS
    with `tls`)."""
    from baton.worker.overload_manager import OverloadManager
    from baton.worker.proxy.cluster import ClusterManager
    from baton.worker.proxy.http.pool import PoolManager
    from baton.worker.stats import Stats
    from baton.xds.bootstrap import load_bootstrap
    from tests.unit.test_http_express import BOOTSTRAP

    path = tmp_path / "bootstrap.yaml"
    path.write_text(BOOTSTRAP % "")
    snap = load_bootstrap(str(path))
    worker = types.SimpleNamespace(loop=loop, stats=Stats(), is_own_listener=lambda a: False)
    worker.clusters = ClusterManager(loop=loop, stats=worker.stats)
    worker.clusters.apply(snap["clusters"])
    worker.http_pools = PoolManager(loop, worker.stats)
    worker.overload = OverloadManager(worker, None)
    sock = socket.create_server(("127.0.0.1", 0))
    spec = {**snap["listeners"][0], "port": sock.getsockname()[1], **spec_extra}
    if tls:
        from tests.tls_certs import leaf, make_ca
        from tests.unit.test_tls_server import spec as tls_spec
        spec["filter_chains"] = [{**spec["filter_chains"][0], "tls": tls_spec(leaf(make_ca()))}]
    return Listener(worker, spec, sock.detach())


@pytest.mark.parametrize("loop_factory, spec_extra, plain", [
    (uvloop.new_event_loop, {}, True),
    (uvloop.new_event_loop, {"inspectors": ["tls"]}, False),
    (uvloop.new_event_loop, {"original_dst": True}, False),
    (uvloop.new_event_loop, {"tls": True}, False),
    (asyncio.new_event_loop, {}, False),
], ids=["plain-http", "inspected", "original-dst", "https", "asyncio-loop"])
def test_a_clear_text_http_listener_on_uvloop_takes_accepted_sockets(tmp_path, loop_factory,
                                                                     spec_extra, plain):
    """The case the fast path is for takes it (review R1, finding 8: only the cases that must
    not take it were tested), and an HTTP listener that inspects, reads the original
    destination, terminates TLS or runs on asyncio's loop does not."""
    loop = loop_factory()
    listener = _http_listener(tmp_path, loop, **spec_extra)
    try:
        assert listener.default_chain.http_config is not None
        assert listener.plain_http is plain
    finally:
        listener.close()
        loop.close()

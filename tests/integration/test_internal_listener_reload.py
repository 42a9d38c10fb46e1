"""Connections through an internal listener (a Unix socket pair inside one worker) across
`baton reload`: neither end may leave its worker (the other end stays there, and the socket is
no TCP one a new worker could rebuild), so both the connecting side (a tcp_proxy whose
upstream is internal) and the internal listener's own connection (tcp_proxy or HTTP) drain in
the old generation. Before, both were moved: the HTTP one was closed (the adopter rebuilt an
AF_UNIX descriptor as the listener's family and uvloop refused it, EOPNOTSUPP)."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest

from .clients import Http1Reader, recv_exact
from .conftest import (Baton, Upstream, free_port, http_bootstrap, pid_alive, static_cluster,
                       wait_until)

T = "type.googleapis.com/"
TCP_PROXY = T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _front_through_internal(port: int, inner_filters: list, clusters: list) -> dict:
    """A tcp_proxy listener on `port` into the internal listener "inner", whose chain is
    `inner_filters`."""
    front = {"name": "front", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
             "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                 "@type": TCP_PROXY, "stat_prefix": "front", "cluster": "to_inner"}}]}]}
    inner = {"name": "inner", "internal_listener": {}, "filter_chains": [{"filters": inner_filters}]}
    to_inner = {"name": "to_inner", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "to_inner", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "envoy_internal_address": {"server_listener_name": "inner"}}}}]}]}}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
            "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
                "@type": T + "udpa.type.v1.TypedStruct",
                "type_url": T + "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}],
            "static_resources": {"listeners": [front, inner], "clusters": [to_inner, *clusters]}}


def _reload_keeps(b: Baton, connections: int) -> int:
    """Reload; the old generation's master pid, once its worker has kept its `connections`.
    `baton reload` returns once the new generation took over and the old worker moves (here:
    keeps) its connections right after: without the wait, the bytes a test sends next and the
    connections' end could all come first, leaving nothing to keep ("moved 0 of 0")."""
    old = b.master_pid()
    result = b.reload()
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: f"moved 0 of {connections} connection(s)" in b.log, 10,
               f"the old worker keeping its {connections} connection(s)")
    return old


def _stayed_and_clean(b: Baton, old: int, connections: int) -> None:
    """Every connection stayed in the old generation, which ends once they have (drained,
    not cut), and no error was logged up to the end (a wrongly moved one fails in the new
    worker, at the latest when it stops)."""
    b.wait_previous_gone(old, timeout=20)
    b.stop()
    log = b.log
    assert f"moved 0 of {connections} connection(s)" in log, log[-3000:]
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def _echo_through_internal(tmp_path, port: int, echo: int) -> Baton:
    """One worker; `port` is a tcp_proxy into an internal listener whose tcp_proxy echoes."""
    inner = [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": "inner", "cluster": "echo"}}]
    return Baton(tmp_path / "b", _front_through_internal(port, inner, [static_cluster("echo", echo)]),
                 concurrency=1).start()


def _echoed_connection(port: int) -> socket.socket:
    """A connection through both listeners, with one exchange done."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(b"before")
    assert recv_exact(s, 6) == b"before"
    return s


@pytest.fixture(scope="module")
def echo():
    up = Upstream("echo")
    yield up.port
    up.stop()


def test_a_tcp_connection_through_an_internal_listener_drains_across_a_reload(tmp_path, echo):
    port = free_port()
    b = _echo_through_internal(tmp_path, port, echo)
    try:
        with _echoed_connection(port) as s:
            old = _reload_keeps(b, 2)
            for message in (b"after the reload", b"z" * 200_000):
                s.sendall(message)
                assert recv_exact(s, len(message)) == message
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) == b""
        _stayed_and_clean(b, old, 2)        # the front connection and the internal one
    finally:
        b.stop()


def test_http_exchanges_through_an_internal_listener_go_on_across_a_reload(tmp_path, recorder):
    """A response streaming at the reload comes whole, and a request whose body straddles the
    reload reaches the upstream whole; each connection then ends as a drained one does."""
    port = free_port()
    hcm = http_bootstrap(0, 0, recorder)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    b = Baton(tmp_path / "b", _front_through_internal(port, hcm, [static_cluster("app", recorder)]),
              concurrency=1).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as streaming, \
                socket.create_connection(("127.0.0.1", port), timeout=20) as posting:
            streaming.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nx-test-events: 10,100\r\n\r\n")
            events = Http1Reader(streaming)
            assert events.head()[0] == 200
            assert events.chunk().startswith(b"data: 0")
            body = b"q" * 100_000
            posting.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                            + body[:50_000])
            old = _reload_keeps(b, 4)
            posting.sendall(body[50_000:])
            status, _, answer = Http1Reader(posting).response()
            assert status == 200 and json.loads(answer)["body_length"] == len(body)
            rest = b"".join(iter(events.chunk, b""))
            assert rest.count(b"data: ") == 9, rest
        _stayed_and_clean(b, old, 4)
    finally:
        b.stop()


@pytest.mark.parametrize("how", ["drain", "stop"])
def test_stopping_the_new_generation_ends_the_draining_old_one_instead_of_reviving_it(
        tmp_path, echo, how):
    """SIGTERM (a drain) or SIGINT (a fast stop) to the new master while the previous
    generation still drains a connection that could not move: the old master sees only that
    its successor exited, and used to take it for a crash and serve again, so a stopped service
    came back as its older generation. The new master now leaves a mark before it goes
    (supervisor/stop_marker.py): after a drain the old generation finishes its connection and
    ends with it; after a fast stop it ends at once. Neither serves again."""
    port = free_port()
    b = _echo_through_internal(tmp_path, port, echo)
    try:
        with _echoed_connection(port) as s:
            old = _reload_keeps(b, 2)
            new = b.master_pid()
            os.kill(new, signal.SIGTERM if how == "drain" else signal.SIGINT)
            wait_until(lambda: not pid_alive(new), 20, "the new master to stop")
            if how == "drain":
                s.sendall(b"still carried")         # by the old generation, draining on
                assert recv_exact(s, 13) == b"still carried"
                assert pid_alive(old)
                s.shutdown(socket.SHUT_WR)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                assert how == "stop"
        b.wait_previous_gone(old, timeout=20)
        assert b.wait(20) == 0              # the keeper: the service stopped, cleanly
        log = b.log
        assert f"stopped on purpose ({how})" in log, log[-3000:]
        assert "serves again" not in log and "Traceback" not in log, log[-3000:]
        assert not [p.name for p in b.runtime_dir.iterdir() if p.name.startswith("stopped-")]
    finally:
        b.stop()

"""Differential: an idle HTTP/1.1 keep-alive connection on a listener that LDS changes or
removes, Baton against a real Envoy 1.40 configured by the same test control plane (each its
own), both with --drain-time-s 0: the connection is closed at once, its FIN not held for
delayed_close_timeout (1 s, the default, on these listeners). Measured with Envoy 1.40
(filesystem LDS, /tmp probe): the FIN comes when the drain time ends (2.0 s with
--drain-time-s 2, 1.0 s with 1, at once with 0), whatever delayed_close_timeout and
drain_timeout say. Baton closes such a connection when the listener drains, without waiting
the drain time (worker/main.py), and held its FIN a second there since the delayed close."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

from baton.xds import protos  # noqa: F401 - the types, imported before the two threads use them
from ..waiting import wait_until
from ..xds_support.control_plane import LISTENER, ControlPlane
from ..xds_support.resources import NamedUpstream, bootstrap, get, listener
from .conftest import Baton, free_port
from .differential.proxies import PROXIES, Envoy
from .test_xds import serve_basics

DRAIN = ("--drain-time-s", "0")


def extra_listener(port: int, prefix: str) -> dict:
    """Another HTTP listener, "extra", with the connection manager's defaults (a 1 s delayed
    close) under `prefix`: a new prefix is a change that drains its connections."""
    spec = listener(port)
    spec["name"] = "extra"
    spec["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = prefix
    return spec


def _idle_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b"\r\n\r\nup"):
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    return sock


def _fin_after(sock: socket.socket, update) -> str:
    """How the idle connection `sock` ends after `update()` (the LDS change)."""
    with sock:
        start = time.monotonic()
        update()
        try:
            ending = "FIN" if sock.recv(65536) == b"" else "data"
        except OSError as exc:
            ending = type(exc).__name__
        took = time.monotonic() - start
    return f"{ending} at once" if took < 0.6 else f"{ending} after {took:.1f} s"


def _observe(proxy: str, tmp_path, up: NamedUpstream) -> dict:
    plane = ControlPlane()
    plane.start()
    try:
        main_port, extra_port = free_port(), free_port()
        serve_basics(plane, main_port, up)
        boot = bootstrap(free_port(), plane.port, "GRPC")
        process = (Envoy(tmp_path / proxy, boot, args=DRAIN).start(timeout=30) if proxy == "envoy"
                   else Baton(tmp_path / proxy, boot, extra_args=DRAIN).start(30))
        try:
            wait_until(lambda: get(main_port) == "up", 10, f"{proxy}: the main listener")
            plane.set_resources(LISTENER, [listener(main_port), extra_listener(extra_port, "x1")],
                                "2")
            wait_until(lambda: get(extra_port) == "up", 10, f"{proxy}: the added listener")
            seen = {}
            seen["changed"] = _fin_after(_idle_connection(extra_port), lambda: plane.set_resources(
                LISTENER, [listener(main_port), extra_listener(extra_port, "x2")], "3"))
            wait_until(lambda: get(extra_port) == "up", 10, f"{proxy}: the changed listener")
            seen["removed"] = _fin_after(_idle_connection(extra_port), lambda: plane.set_resources(
                LISTENER, [listener(main_port)], "4"))
            return seen
        finally:
            process.stop()
    finally:
        plane.close()


def test_an_idle_connection_of_a_drained_listener_closes_without_the_delayed_close(tmp_path):
    up = NamedUpstream("up")
    try:
        with ThreadPoolExecutor(len(PROXIES)) as pool:
            running = {proxy: pool.submit(_observe, proxy, tmp_path, up) for proxy in PROXIES}
            seen = {proxy: running[proxy].result() for proxy in PROXIES}
    finally:
        up.stop()
    expected = {"changed": "FIN at once", "removed": "FIN at once"}
    if "envoy" in seen:
        assert seen["envoy"] == expected, f"Envoy observed {seen['envoy']}"
    if "baton" in seen:
        assert seen["baton"] == seen.get("envoy", expected), f"Baton differs: {seen}"

"""Istio's virtual listeners over LDS (issue 14): a `bind_to_port: false` listener arrives,
is ACKed and installed in every worker without a socket (its port stays free), survives a
reload, and goes away again, while the bound listeners serve throughout."""

from __future__ import annotations

import socket

from baton.xds import protos  # noqa: F401 - declares Istio's types for the test control plane
from ..waiting import wait_until
from ..xds_support.control_plane import LISTENER
from ..xds_support.resources import get, listener
from .conftest import free_port
from .test_xds import named, plane, serve_basics, start_baton, tcp_listener  # noqa: F401

T = "type.googleapis.com/"


def virtual(port: int) -> dict:
    spec = tcp_listener(f"127.0.0.1_{port}", port, "local")
    spec["bind_to_port"] = False
    spec["traffic_direction"] = "OUTBOUND"
    spec["filter_chains"][0]["filters"].insert(0, {"name": "istio.stats", "typed_config": {
        "@type": T + "stats.PluginConfig"}})
    return spec


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def test_a_virtual_listener_comes_and_goes_without_a_socket(tmp_path, plane, named):  # noqa: F811
    up = named("up")
    main_port, virtual_port = free_port(), free_port()
    serve_basics(plane, main_port, up)
    baton = start_baton(tmp_path, plane.port)
    try:
        wait_until(lambda: get(main_port) == "up", 10, "main listener")
        plane.set_resources(LISTENER, [listener(main_port), virtual(virtual_port)], "2")
        wait_until(lambda: plane.acked(LISTENER, "2"), 10, "LDS v2 ACK")
        stat = f"listener.127.0.0.1_{virtual_port}.downstream_cx_total"
        wait_until(lambda: stat in baton.stats(), 10, "the virtual listener in the workers")
        assert refused(virtual_port)                 # nothing bound its port
        assert get(main_port) == "up"
        baton.reload()
        assert stat in baton.stats() and refused(virtual_port) and get(main_port) == "up"
        plane.set_resources(LISTENER, [listener(main_port)], "3")
        wait_until(lambda: plane.acked(LISTENER, "3"), 10, "LDS v3 ACK")
        assert get(main_port) == "up"
        assert "Traceback" not in baton.log and "no socket for listener" not in baton.log
        assert "unknown listener" not in baton.log
    finally:
        baton.stop()

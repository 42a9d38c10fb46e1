"""A listener from LDS whose remote Wasm module's server trickles (a 200 head, then a byte every
0.2 s): the fetch must not hold up the rest of the config. In Envoy 1.40 and Baton alike, while
the module trickles, an EDS update is applied (the main listener goes to the new endpoint) and
a CDS update is ACKed, the main listener serves on and the Wasm listener does not serve yet;
once the server sends the rest, the listener is ACKed and its plugin runs. Baton's xDS agent
waited for the fetch before reading the next ADS response (worker/wasm/remote.py, xds/agent.py).
And Baton's agent restarted with the listener in its saved state (the module cache off, so it
fetches again): it starts its ADS stream and keeps applying updates while the module trickles
(it fetched in place, before its stream started). And a bootstrap's module that trickles costs
Baton's start its http_uri.timeout, no more (the master's check waited for ever)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import threading

import pytest

from ..waiting import wait_until
from ..xds_support.control_plane import CLUSTER, ENDPOINT, LISTENER
from ..xds_support.resources import cluster, endpoints, get, listener
from .conftest import Baton, free_port, pid_alive
from .differential.bootstraps import bootstrap, cluster as static_cluster, http_listener
from .differential.proxies import PROXIES
from .test_wasm_ecds import fetch
from .test_wasm_remote_ecds import module, modules_cluster
from .test_wasm_remote_xds import serve_a_wasm_listener, wasm_listener
from .test_xds import named, plane, serve_basics, start_baton  # noqa: F401

TRICKLE_SECONDS = 0.2
TRICKLE_BYTES = 150             # 30 s at most: a connection then gives up


class TrickleServer:
    """Serves `code` to any GET: at once while `flowing` is set, else its head and then a byte
    every TRICKLE_SECONDS until `flowing` is set (then the rest at once)."""

    def __init__(self, code: bytes):
        self.code = code
        self.flowing = threading.Event()
        self.asked = threading.Event()
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _answer(self, conn):
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            self.asked.set()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.code))
            sent = 0
            while sent < TRICKLE_BYTES and not self.flowing.wait(0 if not sent else
                                                                  TRICKLE_SECONDS):
                if self.stopped.is_set():
                    return
                conn.sendall(self.code[sent:sent + 1])
                sent += 1
            conn.sendall(self.code[sent:])

    def close(self):
        self.stopped.set()
        self.flowing.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)    # wakes the accept
        self.listener.close()
        for thread in self.threads:
            thread.join(5)


@pytest.mark.parametrize("proxy", PROXIES)
def test_a_trickling_module_server_holds_up_only_its_listener(  # noqa: F811
        tmp_path, plane, named, proxy, monkeypatch):
    monkeypatch.setenv("BATON_WASM_CACHE", "off")
    code = module()
    server = TrickleServer(code)
    up2 = named("up2")
    process, main_port, port = serve_a_wasm_listener(tmp_path, plane, named("up"), proxy,
                                                     server.port, code)
    try:
        assert server.asked.wait(10), "the module was not asked for"
        plane.set_resources(ENDPOINT, [endpoints(up2.port)], "2")
        wait_until(lambda: get(main_port) == "up2", 10, "the EDS update while the module trickles")
        extra = modules_cluster(up2.port)       # STATIC: Envoy ACKs CDS once it is warm
        extra["name"] = extra["load_assignment"]["cluster_name"] = "extra"
        plane.set_resources(CLUSTER, [cluster(), modules_cluster(server.port), extra], "3")
        wait_until(lambda: plane.acked(CLUSTER, "3"), 10, "the CDS update while it trickles")
        assert fetch(port, "/x") is None        # its listener waits for the module
        # Envoy 1.40 ACKs the listener and warms it; Baton answers once it is translated.
        assert (plane.acked(LISTENER, "2") is not None) == (proxy == "envoy")
        server.flowing.set()
        wait_until(lambda: plane.acked(LISTENER, "2"), 10, "the listener ACKed")
        wait_until(lambda: fetch(port, "/x") == (200, "hello"), 10, "the plugin, running")
        assert fetch(port, "/deny/me") == (403, "hello")
        assert get(main_port) == "up2"
    finally:
        process.stop()
        server.close()


def test_a_restarted_agent_restores_a_listener_whose_module_trickles(  # noqa: F811
        tmp_path, plane, named, monkeypatch):
    monkeypatch.setenv("BATON_WASM_CACHE", "off")     # the new agent has to fetch it again
    code = module()
    server = TrickleServer(code)
    server.flowing.set()
    up, up2 = named("up"), named("up2")
    main_port, port = free_port(), free_port()
    serve_basics(plane, main_port, up)
    plane.set_resources(CLUSTER, [cluster(), modules_cluster(server.port)], "1")
    plane.set_resources(LISTENER, [listener(main_port),
                                   wasm_listener(port, hashlib.sha256(code).hexdigest())], "1")
    baton = start_baton(tmp_path, plane.port)
    try:
        wait_until(lambda: fetch(port, "/x") == (200, "hello"), 10, "the plugin, running")
        agent = baton.status()["xds_agent"]
        last_stream = max(r["stream"] for r in plane.requests())
        server.flowing.clear()
        server.asked.clear()
        os.kill(agent["pid"], signal.SIGKILL)
        wait_until(lambda: not pid_alive(agent["pid"]), 10, "the agent gone")
        assert server.asked.wait(15), "the new agent did not fetch the module"
        first = wait_until(lambda: [r for r in plane.requests(LISTENER)
                                    if r["stream"] > last_stream], 10,
                           "the new agent's stream while the module trickles")[0]
        assert first["version_info"] == "1"              # it resumed from what was accepted
        plane.set_resources(ENDPOINT, [endpoints(up2.port)], "2")
        wait_until(lambda: get(main_port) == "up2", 10, "an update while the module trickles")
        server.flowing.set()
        wait_until(lambda: fetch(port, "/x") == (200, "hello"), 10, "the plugin, restored")
        assert get(main_port) == "up2"
    finally:
        baton.stop()
        server.close()


def test_a_bootstraps_module_that_trickles_costs_the_start_its_timeout_only(  # noqa: F811
        tmp_path, named):
    """The master's bootstrap check fetches in place: a trickling server held it for ever
    (each socket read had the timeout); now the try ends at http_uri.timeout (0.5 s here, no
    retry) and the plugin fails closed, as Envoy's."""
    code = module()
    server = TrickleServer(code)
    up = named("up")
    port = free_port()
    routes = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]}
    wasm = wasm_listener(port, hashlib.sha256(code).hexdigest())
    remote = wasm["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    code_spec = remote["typed_config"]["config"]["vm_config"]["code"]["remote"]
    code_spec["http_uri"]["timeout"] = "0.5s"
    code_spec["retry_policy"] = {"num_retries": 0}
    boot = bootstrap(free_port(), [http_listener("wasm", port, routes, http_filters=[remote])],
                     [static_cluster("up", [up.port]), static_cluster("modules", [server.port])])
    baton = Baton(tmp_path / "baton", boot)
    try:
        baton.start(15)
        assert server.asked.is_set()
        assert fetch(port, "/x") == (503, None)     # the plugin failed: closed
        assert "timed out (http_uri.timeout)" in baton.log
    finally:
        baton.stop()
        server.close()

"""Differential: a Wasm module given as vm_config.code.remote (http_uri + sha256), fetched
from an HTTP server when the config is loaded, through Envoy 1.40 and Baton: the fetched
module runs (tests/fixtures/wasm/deny.wat); a module whose sha256 is not the given one, or
a server nobody answers at, leaves the plugin uncreated: requests get the empty 503 of a
failed plugin, or, with fail_open, pass."""

from __future__ import annotations

import hashlib
import socket

import pytest
import wasmtime

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import differential, header, upstream_header
from .differential.proxies import ProxyPair, Recorder
from ..wasm_module_server import ModuleServer

from .test_differential_wasm import exchange
from .test_differential_wasm_host import FIXTURES, WASM_TYPE

DENY = wasmtime.wat2wasm((FIXTURES / "deny.wat").read_text())
SHA = hashlib.sha256(DENY).hexdigest()


def remote_filter(port: int, sha256: str, path: str = "/deny.wasm", **plugin) -> dict:
    return {"name": "wasm", "typed_config": {"@type": WASM_TYPE, "config": {
        "name": "remote", "root_id": "x", **plugin,
        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"remote": {
            "http_uri": {"uri": f"http://127.0.0.1:{port}{path}", "cluster": "modules",
                         "timeout": "2s"},
            "sha256": sha256,
            "retry_policy": {"num_retries": 1,
                             "retry_back_off": {"base_interval": "0.05s",
                                                "max_interval": "0.1s"}}}}}}}}


def remote_bootstrap(upstreams, module_port, dead_port):
    routes = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}
    filters = {
        "good": remote_filter(module_port, SHA),
        "badsha": remote_filter(module_port, "0" * 64),
        "badsha_open": remote_filter(module_port, "0" * 64, fail_open=True),
        # Not SHA: fetched code is kept by its hash, and a config naming a hash already
        # fetched (from anywhere) gets that code without a fetch, in Envoy and Baton alike.
        "dead": remote_filter(dead_port, hashlib.sha256(b"never served").hexdigest()),
    }

    def template(ports, admin):
        return bootstrap(admin, [http_listener(name, ports[name], routes, http_filters=[f])
                                 for name, f in filters.items()],
                         [cluster("a", [upstreams["a"]]), cluster("modules", [module_port])])
    return template


@pytest.fixture(scope="module")
def module_server():
    server = ModuleServer({"/deny.wasm": DENY})
    yield server.port
    server.close()


@pytest.fixture(scope="module")
def dead_port():
    """A port that refuses connections (bound, never listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture(scope="module")
def recorder():
    rec = Recorder("a")
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def pair(recorder, module_server, dead_port, tmp_path_factory, monkeypatch_module):
    p = ProxyPair(tmp_path_factory.mktemp("diff-wasm-remote"),
                  remote_bootstrap(recorder.ports, module_server, dead_port),
                  ["good", "badsha", "badsha_open", "dead"])
    yield p
    p.stop()


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    """Baton's fetched-code cache in a directory of this module's (a fetched module must not
    be found from an earlier run)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BATON_WASM_CACHE", str(tmp_path_factory.mktemp("wasm-cache")))
    yield mp
    mp.undo()


def test_the_fetched_module_runs(pair):
    def denied(obs):
        assert (obs["status"], obs["body"]) == (403, "denied\n"), obs
        assert header(obs, "x-wasm") == "hello", obs
    differential(pair, exchange("good", "/deny", "remote-deny"), denied)

    def allowed(obs):
        assert obs["status"] == 200 and header(obs, "x-wasm") == "hello", obs
    differential(pair, exchange("good", "/ok", "remote-ok"), allowed)


@pytest.mark.parametrize("listener", ["badsha", "dead"])
def test_a_module_that_could_not_be_fetched_fails_closed(pair, listener):
    def expect(obs):
        assert (obs["status"], obs["body"]) == (503, ""), obs
    differential(pair, exchange(listener, "/ok", f"remote-{listener}"), expect)


def test_a_module_that_could_not_be_fetched_fails_open_with_fail_open(pair):
    def expect(obs):
        assert obs["status"] == 200 and header(obs, "x-wasm") is None, obs
        assert upstream_header(obs, "x-wasm-seen") is None, obs
    differential(pair, exchange("badsha_open", "/ok", "remote-open"), expect)

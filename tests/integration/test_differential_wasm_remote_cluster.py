"""Differential: remote Wasm code goes through `http_uri.cluster`, in Envoy 1.40 and Baton
alike. Each URI names a host nobody can reach (modules.invalid); the cluster's endpoint is
the module server: the module is fetched (Host is the URI's authority) and runs. A cluster
with TLS (UpstreamTlsContext: SNI, a trusted CA) fetches over TLS from an HTTPS server; a
cluster that does not exist leaves the plugin uncreated (the empty 503 of a failed plugin)."""

from __future__ import annotations

import hashlib
import ssl

import pytest

from ..tls_certs import leaf, make_ca
from ..wasm_module_server import ModuleServer
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import differential, header
from .differential.proxies import PROXIES, ProxyPair, Recorder
from .test_differential_wasm import exchange
from .test_differential_wasm_remote import remote_filter
from .test_wasm_remote_ecds import module

AUTHORITY = "modules.invalid:9"
MODULES = {name: module() for name in ("plain", "tls", "nowhere")}   # a fetch each
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def via(name: str, cluster_name: str) -> dict:
    f = remote_filter(9, hashlib.sha256(MODULES[name]).hexdigest(), path=f"/{name}.wasm")
    uri = f["typed_config"]["config"]["vm_config"]["code"]["remote"]["http_uri"]
    uri.update(uri=f"http://{AUTHORITY}/{name}.wasm", cluster=cluster_name)
    return f


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    ca = make_ca()
    cert, key = leaf(ca, dns=["modules.test"]).write(tmp_path_factory.mktemp("certs"), "m")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    served = {f"/{name}.wasm": code for name, code in MODULES.items()}
    plain, tls = ModuleServer(served), ModuleServer(served, context)
    yield plain, tls, ca.cert_pem.decode()
    plain.close()
    tls.close()


@pytest.fixture(scope="module")
def recorder():
    rec = Recorder("a")
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def pair(recorder, servers, tmp_path_factory):
    plain, tls, ca_pem = servers
    mp = pytest.MonkeyPatch()        # Baton's fetched-code cache: this module's own
    mp.setenv("BATON_WASM_CACHE", str(tmp_path_factory.mktemp("wasm-cache")))
    routes = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}
    filters = {"plain": via("plain", "modules"), "tls": via("tls", "modules_tls"),
               "nowhere": via("nowhere", "no_such_cluster")}
    tls_socket = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UPSTREAM_TLS, "sni": "modules.test", "common_tls_context": {
            "validation_context": {"trusted_ca": {"inline_string": ca_pem}}}}}

    def template(ports, admin):
        return bootstrap(admin, [http_listener(name, ports[name], routes, http_filters=[f])
                                 for name, f in filters.items()],
                         [cluster("a", [recorder.ports["a"]]), cluster("modules", [plain.port]),
                          cluster("modules_tls", [tls.port], transport_socket=tls_socket)])
    p = ProxyPair(tmp_path_factory.mktemp("diff-wasm-remote-cluster"), template, list(filters))
    yield p
    p.stop()
    mp.undo()


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_the_module_is_fetched_through_the_cluster_and_runs(pair, servers, listener):
    def denied(obs):
        assert (obs["status"], obs["body"]) == (403, "denied\n"), obs
        assert header(obs, "x-wasm") == "hello", obs
    differential(pair, exchange(listener, "/deny", f"cluster-{listener}"), denied)
    plain, tls, _ = servers
    server = plain if listener == "plain" else tls
    assert server.hosts and set(server.hosts) == {AUTHORITY}, server.hosts


def test_a_cluster_that_does_not_exist_leaves_the_plugin_uncreated(pair):
    def expect(obs):
        assert (obs["status"], obs["body"]) == (503, ""), obs
    differential(pair, exchange("nowhere", "/ok", "cluster-nowhere"), expect)


REMOTE_STATS = {    # Envoy 1.40's, for the three modules above: two fetched, one failed
    "wasm.remote_load_cache_hits": 0, "wasm.remote_load_cache_misses": 3,
    "wasm.remote_load_cache_negative_hits": 0, "wasm.remote_load_fetch_successes": 2,
    "wasm.remote_load_fetch_failures": 1, "wasm.remote_load_cache_entries": 3}


@pytest.mark.parametrize("proxy", PROXIES)
def test_the_remote_code_and_vm_stats_are_envoys(pair, proxy):
    target = pair.target(proxy)
    exchange("plain", "/ok", "cluster-stats")(target)           # a VM in use in a worker
    stats = target.stats("wasm.")
    assert {k: stats.get(k) for k in REMOTE_STATS} == REMOTE_STATS, stats
    # VM counts differ (Envoy makes a VM per plugin per worker and one on its main thread
    # at load; Baton a VM per worker at first use): the names and their sense do not.
    runtime = "wasm.envoy.wasm.runtime.v8."
    assert stats[runtime + "created"] >= stats[runtime + "active"] >= 1, stats
    assert stats["wasm.wasm_vm_count"] == stats[runtime + "active"], stats

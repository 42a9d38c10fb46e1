"""Remote Wasm code fetched through `http_uri.cluster`, as Envoy's RemoteDataFetcher: the
cluster's endpoint is dialled (never the URI's host), the URI's authority is the Host and
its path the target, a try goes to the next endpoint, the cluster's TLS (verification, SNI)
is used, a cluster that does not exist fails the try; the xDS agent's deferral (a
translation that would fetch records the module and fails, and succeeds once it is held)."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl

import pytest
import wasmtime

from baton.worker.wasm import cache, remote
from baton.xds import protos
from baton.xds.http_filters_wasm import translate_wasm
from baton.xds.translate import translate_cluster

from ..tls_certs import leaf, make_ca
from ..wasm_module_server import ModuleServer
from .test_wasm_remote import code, wasm_pb

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "wasm")
DENY = wasmtime.wat2wasm(open(os.path.join(FIXTURES, "deny.wat")).read())
SHA = hashlib.sha256(DENY).hexdigest()
URI = "http://modules.invalid:7/m/deny.wasm?v=1"


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(remote, "_fetched", {})
    monkeypatch.setattr(remote, "_failed", {})
    monkeypatch.setattr(remote, "_clusters", None)


def module_server(context=None):
    return ModuleServer({"/m/deny.wasm": DENY, "/deny.wasm": DENY}, context)


@pytest.fixture
def server():
    s = module_server()
    yield s
    s.close()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster(name: str, ports, **extra) -> dict:
    pb = protos.message_class("envoy.config.cluster.v3.Cluster")()
    protos.import_types_in(extra)
    protos.json_format.ParseDict({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": p}}}}
            for p in ports]}]}, **extra}, pb)
    errors = []
    spec = translate_cluster(pb, "c", errors)
    assert errors == []
    return spec


def test_the_fetch_goes_to_the_cluster_with_the_uris_host_and_path(server):
    remote.use_clusters({"modules": cluster("modules", [server.port])})
    r = remote.Remote(URI, SHA, 2, upstream=remote.upstream_of("modules"))
    assert r.get() == (DENY, "")
    assert server.seen == [("modules.invalid:7", "/m/deny.wasm?v=1")]


def test_each_try_goes_to_the_clusters_next_endpoint(server):
    remote.use_clusters({"modules": cluster("modules", [dead_port(), server.port])})
    for _ in range(2):                      # whichever endpoint the first try takes
        remote._fetched.clear()
        r = remote.Remote(URI, SHA, 2, retries=1, base=0.001,
                          upstream=remote.upstream_of("modules"))
        assert r.get() == (DENY, "")


def test_a_cluster_that_does_not_exist_or_has_no_endpoints_fails_the_try():
    remote.use_clusters({"empty": cluster("empty", [])})
    assert remote.upstream_of("nowhere") is None
    assert remote.Remote(URI, SHA, 1).try_once() == (None, "no such cluster")
    assert remote.Remote(URI, SHA, 1, upstream=remote.upstream_of("empty")).try_once() == \
        (None, "cluster empty has no endpoints")


def test_an_eds_clusters_endpoints_are_its_assignments(server):
    eds = {"name": "m", "type": "EDS", "eds": {"service_name": "svc"}, "endpoints": []}
    remote.use_clusters({"m": eds}, {"svc": [{"address": "127.0.0.1", "port": server.port,
                                              "weight": 1}]}.get)
    assert remote.upstream_of("m").endpoints == [("127.0.0.1", server.port)]


def tls_cluster(port: int, ca_pem: str, sni: str) -> dict:
    return cluster("modules", [port], transport_socket={
        "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                     "UpstreamTlsContext",
            "sni": sni, "common_tls_context": {"validation_context": {
                "trusted_ca": {"inline_string": ca_pem}}}}})


def test_a_tls_cluster_is_fetched_over_its_tls_with_its_sni_and_verification(tmp_path):
    ca = make_ca()
    cert, key = leaf(ca, dns=["modules.test"]).write(tmp_path, "server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names = []
    context.sni_callback = lambda obj, name, ctx: names.append(name)
    server = module_server(context)
    try:
        remote.use_clusters({"modules": tls_cluster(server.port, ca.cert_pem.decode(),
                                                     "modules.test")})
        r = remote.Remote(URI, SHA, 2, upstream=remote.upstream_of("modules"))
        assert r.try_once() == (DENY, "")
        assert names == ["modules.test"] and server.seen == [("modules.invalid:7",
                                                              "/m/deny.wasm?v=1")]
        other = make_ca("rsa")              # a CA that did not sign the server: refused
        remote.use_clusters({"modules": tls_cluster(server.port, other.cert_pem.decode(),
                                                     "modules.test")})
        r = remote.Remote(URI, SHA, 2, upstream=remote.upstream_of("modules"))
        body, why = r.try_once()
        assert body is None and "CERTIFICATE_VERIFY_FAILED" in why, why
    finally:
        server.close()


def test_the_agents_translation_defers_the_fetch_and_succeeds_once_held():
    with remote.deferring() as fetches:
        errors = []
        assert translate_wasm(wasm_pb(**code()), "f", errors, []) == (None, None)
    assert errors == ["f: its remote code is being fetched (http://m/deny.wasm)"]
    assert list(fetches) == [SHA] and fetches[SHA].upstream is None     # no cluster "c"
    remote.keep(SHA, DENY)                  # what the agent's fetch does
    with remote.deferring() as fetches:
        errors = []
        name, config = translate_wasm(wasm_pb(**code()), "f", errors, [])
    assert errors == [] and config["code"] == DENY and fetches == {}


def test_a_negatively_cached_module_is_not_deferred_again(monkeypatch):
    remote._failed[SHA] = (remote.time.monotonic(), "refused")
    with remote.deferring() as fetches:
        errors, warnings = [], []
        name, config = translate_wasm(wasm_pb(**code()), "f", errors, warnings)
    assert errors == [] and fetches == {} and config["failed"].endswith(": refused")


def test_the_translation_again_takes_the_fetchs_outcome_even_once_its_negative_entry_expired(
        monkeypatch):
    """The agent translates again with what its fetches gave: never a fetch there (on its
    loop), even when a failure's 10 s negative entry expired while slower fetches ran."""
    with remote.deferring() as fetches:
        translate_wasm(wasm_pb(**code()), "f", [], [])
    outcome = fetches[SHA].fetch_deferred()         # no cluster "c": every try failed
    assert outcome == (None, "no such cluster")
    remote._failed[SHA] = (remote.time.monotonic() - remote.NEGATIVE_SECONDS - 1, "old")
    tries = []
    monkeypatch.setattr(remote.Remote, "try_once", lambda self, end=None: tries.append(1))
    with remote.deferring({SHA: outcome}) as fetches:
        errors = []
        name, config = translate_wasm(wasm_pb(**code()), "f", errors, [])
    assert errors == [] and fetches == {} and tries == []
    assert config["failed"].endswith(": no such cluster")


def counts() -> dict:
    counters, gauges = remote.stats()
    return {k.removeprefix("wasm.remote_load_"): v for k, v in {**counters, **gauges}.items()}


def test_the_stats_count_as_envoys_code_cache(monkeypatch, server):
    monkeypatch.setattr(remote, "_counts", dict.fromkeys(remote.COUNTERS, 0))
    monkeypatch.setattr(remote, "_declared", False)
    assert remote.stats() == ({}, {})       # no Wasm filter yet: not listed
    remote.use_clusters({"modules": cluster("modules", [server.port])})
    errors, once = [], {"retry_policy": {"num_retries": 0}}
    translate_wasm(wasm_pb(**code(**once)), "f", errors, [])    # cluster "c": no such cluster
    assert counts() == {"cache_hits": 0, "cache_misses": 1, "cache_negative_hits": 0,
                        "fetch_successes": 0, "fetch_failures": 1, "cache_entries": 1}
    translate_wasm(wasm_pb(**code(**once)), "f", errors, [])    # within 10 s: negative cache
    assert counts()["cache_negative_hits"] == 1 and counts()["fetch_failures"] == 1
    remote._failed.clear()
    good = code()
    good["code"]["remote"]["http_uri"]["cluster"] = "modules"
    with remote.deferring() as fetches:     # the agent: a miss, then the fetch off the loop
        translate_wasm(wasm_pb(**good), "f", errors, [])
    outcome = fetches[SHA].fetch_deferred()
    with remote.deferring({SHA: outcome}):  # translated again: nothing more counted
        name, config = translate_wasm(wasm_pb(**good), "f", errors, [])
    assert config["code"] == DENY
    assert counts() == {"cache_hits": 0, "cache_misses": 2, "cache_negative_hits": 1,
                        "fetch_successes": 1, "fetch_failures": 1, "cache_entries": 1}
    translate_wasm(wasm_pb(**good), "f", errors, [])        # a later config: a hit
    assert counts()["cache_hits"] == 1


def test_an_eds_cluster_in_the_bootstraps_check_fails_at_once_saying_why():
    """The master checks the bootstrap before the xDS agent runs: an EDS cluster has no
    endpoints there (Envoy's listener waits for its first EDS answer). It said 'cluster m has
    no endpoints' after every retry's back-off; now the reason, at once, with no try."""
    eds = {"name": "m", "type": "EDS", "eds": {"service_name": "svc"}, "endpoints": []}
    remote.use_clusters({"m": eds})                     # no EDS: the bootstrap's check
    slept = []
    r = remote.Remote(URI, SHA, 1, retries=3, upstream=remote.upstream_of("m"))
    code, why = r.fetch(sleep=slept.append)
    assert code is None and slept == [], (why, slept)
    assert why == remote.EDS_IN_BOOTSTRAP % "m"
    assert "takes its endpoints from EDS" in why and "static endpoints" in why

"""Secrets (xds/secrets.py): static_resources.secrets named by a DownstreamTlsContext,
references to SDS sources, resolving (fail closed while a secret is missing), and the errors
`baton check` prints, each naming its path."""

from __future__ import annotations

import pytest

from baton.xds.secrets import resolve_tls, spec_references

from ..tls_certs import leaf, make_ca
from .test_tls_config import TLS_TYPE, bootstrap, certificate, errors, inline, load  # noqa: F401

L0 = "static_resources.listeners[0].filter_chains[0]"
COMMON = L0 + ".transport_socket.typed_config.common_tls_context"


def with_secrets(context: dict, secrets: list) -> dict:
    data = bootstrap(context)
    data["static_resources"]["secrets"] = secrets
    return data


def sds_context(cert_name="server", ca_name=None, sds_config=None, require=False) -> dict:
    config = {"name": cert_name, **({"sds_config": sds_config} if sds_config else {})}
    common = {"tls_certificate_sds_secret_configs": [config]}
    if ca_name:
        common["combined_validation_context"] = {
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}]},
            "validation_context_sds_secret_config": {
                "name": ca_name, **({"sds_config": sds_config} if sds_config else {})}}
    return {"common_tls_context": common, "require_client_certificate": require}


def test_static_secrets_are_resolved_into_the_chain(load, tmp_path):
    ca = make_ca("ecdsa")
    server = leaf(ca, "ecdsa")
    cert_path, key_path = server.write(tmp_path, "server")
    data = with_secrets(sds_context(ca_name="ca", require=True), [
        {"name": "server", "tls_certificate": {"certificate_chain": {"filename": cert_path},
                                               "private_key": {"filename": key_path}}},
        {"name": "ca", "validation_context": {"trusted_ca": inline(ca.cert_pem)}}])
    snap = load(data)
    tls = snap["listeners"][0]["filter_chains"][0]["tls"]
    assert tls["certificates"] == [{"chain": server.cert_pem.decode(), "key": server.key_pem.decode()}]
    assert tls["trusted_ca"] == ca.cert_pem.decode()
    assert tls["san_matchers"][0]["type"] == "URI"
    assert tls["missing_secrets"] == []
    assert snap["xds"] is None                 # static secrets need no agent
    assert sorted(snap["secrets"]) == ["ca", "server"]


def test_unknown_static_secret_and_bad_secret_name_their_paths(errors, tmp_path):
    ca = make_ca("ecdsa")
    other = leaf(ca, "rsa")
    server = leaf(ca, "ecdsa")
    data = with_secrets(sds_context(cert_name="nope"), [
        {"name": "mismatch", "tls_certificate": {"certificate_chain": inline(server.cert_pem),
                                                 "private_key": inline(other.key_pem)}},
        {"name": "missing", "tls_certificate": {
            "certificate_chain": {"filename": str(tmp_path / "gone.crt")},
            "private_key": {"filename": str(tmp_path / "gone.key")}}}])
    found = errors(data)
    assert (f"{COMMON}.tls_certificate_sds_secret_configs[0].name: unknown static secret 'nope' "
            "(not in static_resources.secrets)") in found
    assert ("static_resources.secrets[0].tls_certificate: the certificate does not match the "
            "private key (inline_string vs inline_string)") in found
    assert any(e.startswith("static_resources.secrets[1].tls_certificate.certificate_chain.filename: "
                            f"cannot read '{tmp_path / 'gone.crt'}'") for e in found)
    assert len(found) == 4                  # and nothing about the references to those two


def test_a_reference_to_a_broken_secret_is_not_also_unknown(errors):
    ca = make_ca("ecdsa")
    data = with_secrets(sds_context(cert_name="server"), [
        {"name": "server", "tls_certificate": {"certificate_chain": inline(leaf(ca, "ecdsa").cert_pem),
                                               "private_key": inline(leaf(ca, "rsa").key_pem)}}])
    assert errors(data) == ["static_resources.secrets[0].tls_certificate: the certificate does "
                            "not match the private key (inline_string vs inline_string)"]


def test_sds_over_ads_needs_an_ads_stream(errors):
    found = errors(with_node(bootstrap(sds_context(sds_config={"ads": {}}))))
    assert found == [f"{COMMON}.tls_certificate_sds_secret_configs[0].sds_config: an 'ads: {{}}' "
                     "config source needs dynamic_resources.ads_config"]


def with_node(data: dict) -> dict:
    return {**data, "node": {"id": "sidecar~10.0.0.1~app.default~default.svc.cluster.local",
                             "cluster": "app.default"}}


def test_sds_needs_the_node_id_and_cluster_as_in_envoy(errors):
    sds = {"path_config_source": {"path": "/etc/baton/sds.yaml"}}
    assert errors(bootstrap(sds_context(sds_config=sds))) == [
        f"node: id and cluster are required by SDS ({COMMON}.tls_certificate_sds_secret_configs[0] "
        "names secret 'server' from path:/etc/baton/sds.yaml)"]


def test_sds_over_its_own_grpc_cluster_on_a_pipe(load):
    sds = {"api_config_source": {"api_type": "GRPC", "grpc_services": [
        {"envoy_grpc": {"cluster_name": "sds-grpc"}}]}, "initial_fetch_timeout": "2s"}
    data = with_node(bootstrap(sds_context(ca_name="ROOTCA", cert_name="default", sds_config=sds)))
    data["static_resources"]["clusters"].append({
        "name": "sds-grpc", "type": "STATIC", "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"pipe": {"path": "/tmp/sds/agent.sock"}}}}]}]}})
    snap = load(data)
    tls = snap["listeners"][0]["filter_chains"][0]["tls"]
    assert tls["certificates"] == [] and tls["missing_secrets"] == ["default", "ROOTCA"]
    refs = spec_references(snap["listeners"][0])
    assert {r["source"]["key"] for r in refs} == {"grpc:sds-grpc"}
    assert refs[0]["source"]["initial_fetch_timeout"] == 2.0
    assert snap["xds"]["cluster"] is None       # the agent runs, for SDS alone
    # A pipe is the agent's to dial: workers see no host in the cluster.
    assert snap["clusters"]["sds-grpc"]["pipe_endpoints"] == ["/tmp/sds/agent.sock"]
    assert snap["clusters"]["sds-grpc"]["endpoints"] == []


def test_sds_cluster_must_be_static(errors):
    sds = {"api_config_source": {"api_type": "GRPC", "grpc_services": [
        {"envoy_grpc": {"cluster_name": "nope"}}]}}
    found = errors(with_node(bootstrap(sds_context(sds_config=sds))))
    assert found == [f"{COMMON}.tls_certificate_sds_secret_configs[0].sds_config.api_config_source"
                     ".grpc_services[0].envoy_grpc.cluster_name: unknown cluster 'nope' (it must "
                     "be a static cluster)"]


def test_resolving_fails_closed_until_every_secret_is_known():
    ca = make_ca("ecdsa")
    server = leaf(ca, "ecdsa")
    source = {"key": "ads", "kind": "ads", "initial_fetch_timeout": 1.0}
    tls = {"certificates": [], "trusted_ca": None, "san_matchers": [], "sds": {
        "certificates": [{"name": "default", "source": source, "path": "p"}],
        "validation": {"name": "ROOTCA", "source": source, "path": "q"},
        "base": {"certificates": [], "trusted_ca": None, "san_matchers": []}}}
    cert = {"chain": server.cert_pem.decode(), "key": server.key_pem.decode()}
    only_cert = resolve_tls(tls, {"ads": {"default": {"tls_certificate": cert}}})
    assert only_cert["certificates"] == [] and only_cert["missing_secrets"] == ["ROOTCA"]
    both = resolve_tls(only_cert, {"ads": {
        "default": {"tls_certificate": cert},
        "ROOTCA": {"validation_context": {"trusted_ca": ca.cert_pem.decode(), "san_matchers": []}}}})
    assert both["certificates"] == [cert] and both["trusted_ca"] == ca.cert_pem.decode()
    # Resolving again (a rotation) starts from the context's own material, never accumulates.
    again = resolve_tls(both, {"ads": {"default": {"tls_certificate": cert},
                                       "ROOTCA": {"validation_context": {"trusted_ca": "X", "san_matchers": []}}}})
    assert again["certificates"] == [cert] and again["trusted_ca"] == "X"


@pytest.mark.parametrize("secret, message", [
    ({"name": "s"}, "static_resources.secrets[0]: one of tls_certificate, validation_context or "
     "session_ticket_keys is required"),
    ({"name": "s", "session_ticket_keys": {"keys": [{"inline_bytes": "AAAA"}]}},
     "static_resources.secrets[0].session_ticket_keys.keys[0]: Incorrect TLS session ticket key "
     "length. Length 3, expected length 80."),
    ({"tls_certificate": {}}, "static_resources.secrets[0].name: required (references find a secret by name)"),
])
def test_bad_static_secrets(errors, secret, message):
    assert message in errors(with_secrets({"common_tls_context": {"tls_certificates": [
        certificate(leaf(make_ca("ecdsa"), "ecdsa"))]}}, [secret]))


# --- SDS over ADS in the agent's DynamicConfig ---------------------------------------------

def _ads_tls_listener(name, port):
    from .xds_helpers import ADS, tcp_listener
    spec = tcp_listener(name, port)
    spec["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": TLS_TYPE, **sds_context(cert_name="default", sds_config=dict(
                ADS, initial_fetch_timeout="5s"))}}
    return spec


@pytest.fixture
def dynamic(tmp_path):
    from baton.xds.dynamic import DynamicConfig
    from .xds_helpers import load, static_cluster, xds_bootstrap
    return DynamicConfig(load(tmp_path, xds_bootstrap(clusters=[static_cluster("c")])), started=0.0)


def test_an_lds_listener_warms_until_its_ads_secret_arrives(dynamic):
    from baton.xds.ads import LISTENER, SECRET
    from baton.xds.merge import merge
    from .xds_helpers import sotw_update
    ca = make_ca("ecdsa")
    first, second = leaf(ca, "ecdsa"), leaf(ca, "rsa")
    assert dynamic.apply(sotw_update(LISTENER, "1", _ads_tls_listener("l", 10443)), 0.0) == []
    assert dynamic.interest(SECRET) == frozenset({"default"})
    assert list(dynamic.warming_listeners) == ["l"] and not dynamic.active_listeners
    assert dynamic.next_deadline() == 5.0             # the secret's initial_fetch_timeout
    assert "sds: listener 'l' is warming (waits for its secrets)" in dynamic.missing(0.0)
    secret = {"name": "default", "tls_certificate": certificate(first)}
    assert dynamic.apply(sotw_update(SECRET, "1", secret), 1.0) == []
    assert list(dynamic.active_listeners) == ["l"]
    published = dynamic.published(1.0)
    static = {"listeners": [], "clusters": {}, "secrets": {}}
    tls = merge(static, published)["listeners"][0]["filter_chains"][0]["tls"]
    assert tls["certificates"] == [{"chain": first.cert_pem.decode(), "key": first.key_pem.decode()}]
    # A rotation: the listener stays as it is; only the resolved material changes.
    assert dynamic.apply(sotw_update(SECRET, "2", {"name": "default",
                                                   "tls_certificate": certificate(second)}), 2.0) == []
    tls = merge(static, dynamic.published(2.0))["listeners"][0]["filter_chains"][0]["tls"]
    assert tls["certificates"][0]["chain"] == second.cert_pem.decode()


def test_a_bad_ads_secret_is_rejected_with_its_path_and_the_old_one_stays(dynamic):
    from baton.xds.ads import SECRET
    from .xds_helpers import sotw_update
    ca = make_ca("ecdsa")
    good, other = leaf(ca, "ecdsa"), leaf(ca, "rsa")
    assert dynamic.apply(sotw_update(SECRET, "1", {"name": "default",
                                                   "tls_certificate": certificate(good)}), 0.0) == []
    bad = {"name": "default", "tls_certificate": {
        "certificate_chain": inline(good.cert_pem), "private_key": inline(other.key_pem)}}
    assert dynamic.apply(sotw_update(SECRET, "2", bad), 1.0) == [
        "Secret[default].tls_certificate: the certificate does not match the private key "
        "(inline_string vs inline_string)"]
    held = dynamic.accepted[SECRET]["default"].value["tls_certificate"]
    assert held["chain"] == good.cert_pem.decode()


def test_a_tls_spec_whose_secrets_rotate_keeps_its_chain():
    from baton.worker.tls.server import only_secrets_differ
    before = {"certificates": [{"chain": "A", "key": "a"}], "alpn": ["h2"], "missing_secrets": [],
              "sds": {"x": 1}}
    assert only_secrets_differ(before, {**before, "certificates": [{"chain": "B", "key": "b"}]})
    assert not only_secrets_differ(before, {**before, "alpn": ["http/1.1"]})
    assert not only_secrets_differ(before, dict(before))


def test_a_context_waiting_for_its_secrets_refuses_every_handshake():
    """Fail closed in the worker: no certificate until every secret is known, so OpenSSL
    refuses the handshake (ssl.connection_error), even though a CA secret is missing too."""
    from baton.worker.tls.handover import HandshakeFailed
    from baton.worker.tls.server import TlsServer
    from .test_tls_server import client, served, spec
    ca = make_ca("ecdsa")
    source = {"key": "ads", "kind": "ads", "initial_fetch_timeout": 1.0}
    tls = {**spec(leaf(ca, "ecdsa")), "certificates": [], "require_client_certificate": True}
    tls["sds"] = {"certificates": [{"name": "default", "source": source, "path": "p"}],
                  "validation": {"name": "ROOTCA", "source": source, "path": "q"},
                  "base": {"certificates": [], "trusted_ca": None, "san_matchers": []}}
    server = TlsServer(resolve_tls(tls, {}))
    with pytest.raises(HandshakeFailed) as info:
        served(server, client(ca, leaf(ca, "ecdsa", client=True)))
    assert server.failure_of(info.value) == "connection_error"


def test_baton_check_names_the_files_of_a_bad_secret(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import yaml
    ca = make_ca("ecdsa")
    cert_path, _ = leaf(ca, "ecdsa").write(tmp_path, "server")
    _, key_path = leaf(ca, "rsa").write(tmp_path, "other")
    data = with_secrets(sds_context(), [{"name": "server", "tls_certificate": {
        "certificate_chain": {"filename": cert_path}, "private_key": {"filename": key_path}}}])
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(data))
    baton = str(Path(sys.executable).parent / "baton")
    result = subprocess.run([baton, "check", "-c", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (result.stdout + result.stderr).strip().splitlines() == [
        f"static_resources.secrets[0].tls_certificate: the certificate does not match the "
        f"private key ('{cert_path}' vs '{key_path}')"]

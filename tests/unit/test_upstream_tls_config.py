"""A cluster's upstream TLS in the bootstrap -> the snapshot's plain values (xds/tls_upstream.py):
UpstreamTlsContext with Envoy's client defaults, transport_socket_matches with endpoint and
locality metadata, auto_sni, and errors that name their path."""

from __future__ import annotations

from ..tls_certs import leaf, make_ca, spiffe_leaf
from .test_tls_config import errors, load  # noqa: F401 - the fixtures: a bootstrap loaded, its errors

UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
CLUSTER = "static_resources.clusters[0]"


def upstream_tls(**context) -> dict:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": UPSTREAM_TLS, **context}}


def bootstrap(**cluster_fields) -> dict:
    endpoints = cluster_fields.pop("endpoints", None) or [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]
    tcp = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
           "stat_prefix": "t", "cluster": "c"}
    return {"static_resources": {
        "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10443}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                                       "typed_config": tcp}]}]}],
        "clusters": [{"name": "c", "type": "STATIC", "load_assignment": {
            "cluster_name": "c", "endpoints": endpoints}, **cluster_fields}]}}


def cluster_of(snapshot) -> dict:
    return snapshot["clusters"]["c"]


def test_a_plain_cluster_has_no_tls_keys(load):
    cluster = cluster_of(load(bootstrap()))
    assert "transport_socket" not in cluster and "auto_sni" not in cluster


def test_envoys_client_defaults(load):
    cluster = cluster_of(load(bootstrap(transport_socket=upstream_tls())))
    spec = cluster["transport_socket"]
    # Checked against Envoy 1.40: a client offers TLS 1.2 unless told otherwise, verifies
    # nothing without a trusted_ca, keeps one session.
    assert spec == {"sni": None, "alpn": [], "certificates": [], "min_version": "TLSv1_2",
                    "max_version": "TLSv1_2", "cipher_suites": None, "ecdh_curve": None,
                    "trusted_ca": None, "san_matchers": [], "max_session_keys": 1}
    assert cluster["transport_socket_matches"] == []


def test_mtls_with_spiffe_san_and_sni(load):
    ca = make_ca("ecdsa")
    client = spiffe_leaf(ca)
    context = {"sni": "backend.example", "max_session_keys": 0, "common_tls_context": {
        "tls_certificates": [{"certificate_chain": {"inline_string": client.cert_pem.decode()},
                              "private_key": {"inline_string": client.key_pem.decode()}}],
        "alpn_protocols": ["h2"],
        "tls_params": {"tls_maximum_protocol_version": "TLSv1_3"},
        "validation_context": {"trusted_ca": {"inline_string": ca.cert_pem.decode()},
                               "match_typed_subject_alt_names": [
                                   {"san_type": "URI", "matcher": {"exact": "spiffe://x/ns/a/sa/b"}}]}}}
    spec = cluster_of(load(bootstrap(transport_socket=upstream_tls(**context))))["transport_socket"]
    assert spec["sni"] == "backend.example" and spec["alpn"] == ["h2"]
    assert spec["max_version"] == "TLSv1_3" and spec["max_session_keys"] == 0
    assert spec["trusted_ca"] == ca.cert_pem.decode() and len(spec["certificates"]) == 1
    assert spec["san_matchers"][0]["type"] == "URI"


def test_transport_socket_matches_with_endpoint_and_locality_metadata(load):
    istio = {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}
    endpoint = lambda port, **kw: {"endpoint": {"address": {"socket_address": {  # noqa: E731
        "address": "127.0.0.1", "port_value": port}}}, **kw}
    endpoints = [{"metadata": istio, "lb_endpoints": [endpoint(1), endpoint(2, metadata={
        "filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "disabled"}}})]},
        {"lb_endpoints": [endpoint(3)]}]
    raw = {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}
    cluster = cluster_of(load(bootstrap(
        endpoints=endpoints, transport_socket=raw,
        transport_socket_matches=[{"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
                                   "transport_socket": upstream_tls(sni="a")},
                                  {"name": "tlsMode-disabled", "match": {}, "transport_socket": raw}])))
    assert cluster["transport_socket"] is None
    assert [(m["name"], m["match"], m["tls"] and m["tls"]["sni"])
            for m in cluster["transport_socket_matches"]] == [
        ("tlsMode-istio", {"tlsMode": "istio"}, "a"), ("tlsMode-disabled", {}, None)]
    assert [ep.get("tls_match") for ep in cluster["endpoints"]] == [
        {"tlsMode": "istio"}, {"tlsMode": "disabled"}, None]


def test_auto_sni_from_http_protocol_options(load):
    options = {HTTP_OPTIONS: {"@type": "type.googleapis.com/" + HTTP_OPTIONS,
                              "upstream_http_protocol_options": {"auto_sni": True, "auto_san_validation": True},
                              "explicit_http_config": {"http_protocol_options": {}}}}
    cluster = cluster_of(load(bootstrap(transport_socket=upstream_tls(),
                                        typed_extension_protocol_options=options)))
    assert cluster["auto_sni"] == {"sni": True, "san": True, "header": None}


def test_errors_name_their_path(errors):
    ca = make_ca("ecdsa")
    server = leaf(ca)
    other = leaf(make_ca("rsa"), "rsa")
    bad = upstream_tls(allow_renegotiation=True, common_tls_context={
        "tls_certificates": [{"certificate_chain": {"inline_string": server.cert_pem.decode()},
                              "private_key": {"inline_string": other.key_pem.decode()}}],
        "validation_context": {"match_typed_subject_alt_names": [
            {"san_type": "DNS", "matcher": {"exact": "x"}}]}})
    lines = errors(bootstrap(transport_socket=bad, transport_socket_matches=[
        {"name": "m", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.alts"}}]))
    context = f"{CLUSTER}.transport_socket.typed_config"
    assert any(line.startswith(f"{context}.allow_renegotiation") for line in lines), lines
    assert any(line.startswith(f"{context}.common_tls_context.tls_certificates[0]") and
               "does not match" in line for line in lines), lines
    assert any(line.startswith(f"{context}.common_tls_context.validation_context") and
               "trusted_ca" in line for line in lines), lines
    assert any(line.startswith(f"{CLUSTER}.transport_socket_matches[0].transport_socket.name")
               for line in lines), lines


def test_a_downstream_context_on_a_cluster_is_refused(errors):
    socket = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"}}
    lines = errors(bootstrap(transport_socket=socket))
    assert any(line.startswith(f"{CLUSTER}.transport_socket.typed_config:") for line in lines), lines


def test_static_secrets_resolve_into_an_upstream_context(load):
    """Istio's shape: the client certificate and the validation context by reference
    (xds/secrets.py), resolved from static_resources.secrets at load."""
    ca = make_ca("ecdsa")
    me = spiffe_leaf(ca)
    context = {"common_tls_context": {
        "tls_certificate_sds_secret_configs": [{"name": "default"}],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}]},
            "validation_context_sds_secret_config": {"name": "ROOTCA"}}}}
    data = bootstrap(transport_socket=upstream_tls(**context))
    data["static_resources"]["secrets"] = [
        {"name": "default", "tls_certificate": {
            "certificate_chain": {"inline_string": me.cert_pem.decode()},
            "private_key": {"inline_string": me.key_pem.decode()}}},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": ca.cert_pem.decode()}}}]
    spec = cluster_of(load(data))["transport_socket"]
    assert spec["certificates"] == [{"chain": me.cert_pem.decode(), "key": me.key_pem.decode()}]
    assert spec["trusted_ca"] == ca.cert_pem.decode() and spec["missing_secrets"] == []
    assert spec["san_matchers"][0]["type"] == "URI"


def test_a_health_check_that_would_speak_plain_text_to_a_tls_host_is_refused(errors, load):
    http_check = {"timeout": "1s", "interval": "5s", "unhealthy_threshold": 2, "healthy_threshold": 1,
                  "http_health_check": {"path": "/healthz"}}
    lines = errors(bootstrap(transport_socket=upstream_tls(), health_checks=[http_check]))
    assert any(line.startswith(f"{CLUSTER}.health_checks[0]: an HTTP or payload health check")
               for line in lines), lines
    connect_only = {**http_check, "tcp_health_check": {}}
    del connect_only["http_health_check"]
    assert cluster_of(load(bootstrap(transport_socket=upstream_tls(), health_checks=[connect_only])))

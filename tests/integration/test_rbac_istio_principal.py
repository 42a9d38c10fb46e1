"""AuthorizationPolicy `source.principals` as Istio 1.9 / 1.10 wrote it for HTTP: an RBAC
principal on the `istio_authn` dynamic metadata `source.principal`, the value without
"spiffe://" (istiod's srcPrincipalGenerator), matched against what the HTTP istio_authn
filter wrote before it (istio/proxy GetPrincipal: the peer's SPIFFE id, "spiffe://"
stripped), as Envoy's MetadataMatcher reads it. Baton matched the certificate's URI SAN
whole, so Istio's own policies denied every caller; and a chain without istio_authn has no
such metadata, so the policy matches no one (as in Envoy).

No differential: Envoy 1.40 has no istio_authn (the metadata absent without it is Envoy's
plain MetadataMatcher, which test_rbac.py checks)."""

from __future__ import annotations

import ssl

from ..tls_certs import make_ca, spiffe_leaf
from .conftest import free_port
from .test_istio_authn import OURS, ROUTER, T, authn, get

FRONT = "cluster.local/ns/web/sa/front"
RBAC = {"name": "envoy.filters.http.rbac", "typed_config": {
    "@type": T + "envoy.extensions.filters.http.rbac.v3.RBAC", "rules": {"policies": {
        "ns[shop]-policy[reviews]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [{"any": True}]}}],
            "principals": [{"and_ids": {"ids": [{"or_ids": {"ids": [{"metadata": {
                "filter": "istio_authn", "path": [{"key": "source.principal"}],
                "value": {"string_match": {"exact": FRONT}}}}]}}]}}]}}}}}


def _listener(name: str, port: int, filters: list, tls: dict) -> dict:
    hcm = {"@type": T + "envoy.extensions.filters.network.http_connection_manager.v3"
                        ".HttpConnectionManager",
           "stat_prefix": name,
           "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "direct_response": {
                                "status": 200, "body": {"inline_string": "ok"}}}]}]},
           "http_filters": filters + [ROUTER]}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}],
                               "transport_socket": {"name": "envoy.transport_sockets.tls",
                                                    "typed_config": tls}}]}


def test_istio_1_9s_source_principal_policy_matches_the_authn_principal(baton, tmp_path):
    ca = make_ca()
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(ca.cert_pem)
    cert, key = spiffe_leaf(ca, spiffe_id=OURS, client=False).write(tmp_path, "server")
    tls = {"@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
           "require_client_certificate": True, "common_tls_context": {
               "tls_certificates": [{"certificate_chain": {"filename": cert},
                                     "private_key": {"filename": key}}],
               "validation_context": {"trusted_ca": {"filename": str(ca_path)}}}}
    with_authn, without = free_port(), free_port()
    baton({"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                    "port_value": free_port()}}},
           "static_resources": {"listeners": [
               _listener("authn", with_authn, [authn("PERMISSIVE"), RBAC], tls),
               _listener("plain", without, [RBAC], tls)], "clusters": []}},
          concurrency=1)

    def client(spiffe_id: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False          # a workload certificate names no host
        ctx.load_verify_locations(cadata=ca.cert_pem.decode())
        ctx.load_cert_chain(*spiffe_leaf(ca, spiffe_id=spiffe_id).write(tmp_path, "client"))
        return ctx
    front, other = client("spiffe://" + FRONT), client("spiffe://cluster.local/ns/web/sa/other")
    assert get(with_authn, front) == (200, b"ok")
    assert get(with_authn, other) == (403, b"RBAC: access denied")
    assert get(without, front) == (403, b"RBAC: access denied")     # no istio_authn: no metadata

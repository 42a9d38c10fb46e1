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

from ..tls_certs import make_ca
from .conftest import free_port
from .test_istio_authn import T, authn, get, listener, mtls_server, spiffe_client

FRONT = "cluster.local/ns/web/sa/front"
RBAC = {"name": "envoy.filters.http.rbac", "typed_config": {
    "@type": T + "envoy.extensions.filters.http.rbac.v3.RBAC", "rules": {"policies": {
        "ns[shop]-policy[reviews]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [{"any": True}]}}],
            "principals": [{"and_ids": {"ids": [{"or_ids": {"ids": [{"metadata": {
                "filter": "istio_authn", "path": [{"key": "source.principal"}],
                "value": {"string_match": {"exact": FRONT}}}}]}}]}}]}}}}}


def test_istio_1_9s_source_principal_policy_matches_the_authn_principal(baton, tmp_path):
    ca = make_ca()
    tls = mtls_server(ca, tmp_path)
    with_authn, without = free_port(), free_port()
    baton({"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                    "port_value": free_port()}}},
           "static_resources": {"listeners": [
               listener("authn", with_authn, "", tls, [authn("PERMISSIVE"), RBAC]),
               listener("plain", without, "", tls, [RBAC])], "clusters": []}},
          concurrency=1)

    front = spiffe_client(ca, tmp_path, "spiffe://" + FRONT)
    other = spiffe_client(ca, tmp_path, "spiffe://cluster.local/ns/web/sa/other")
    assert get(with_authn, front) == (200, b"ok")
    assert get(with_authn, other) == (403, b"RBAC: access denied")
    assert get(without, front) == (403, b"RBAC: access denied")     # no istio_authn: no metadata

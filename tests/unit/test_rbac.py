"""RBAC (issue 14, Istio's AuthorizationPolicy): xds/rbac.py's translation and the matcher of
worker/proxy/rbac_engine.py, and the HTTP filter's verdicts, counters and per-route rules."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from baton.worker.codecs.message import Headers, Request
from baton.worker.proxy.http.filter import LocalReply
from baton.worker.proxy.http.rbac import RbacFactory
from baton.worker.proxy.rbac_engine import Engine, Facts, spiffe_peer_principal
from baton.worker.stats import Stats
from baton.xds import protos
from baton.xds.http_filters import translate_http_filters
from baton.xds.parse import parse_dict

T = "type.googleapis.com/"
RBAC_TYPE = T + "envoy.extensions.filters.http.rbac.v3.RBAC"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"

# What istiod writes for an ALLOW policy: GET /info* or POST /data, from the sleep account.
ISTIO_ALLOW = {"policies": {"ns[default]-policy[httpbin]-rule[0]": {
    "permissions": [
        {"and_rules": {"rules": [{"or_rules": {"rules": [{"header": {"name": ":method", "exact_match": "GET"}}]}},
                                 {"or_rules": {"rules": [{"url_path": {"path": {"prefix": "/info"}}}]}}]}},
        {"and_rules": {"rules": [{"or_rules": {"rules": [{"header": {"name": ":method", "exact_match": "POST"}}]}},
                                 {"or_rules": {"rules": [{"url_path": {"path": {"exact": "/data"}}}]}}]}}],
    "principals": [{"and_ids": {"ids": [{"or_ids": {"ids": [{"filter_state": {
        "key": "io.istio.peer_principal", "string_match": {"exact": SLEEP}}}]}}]}}]}}}


def translate(rbac: dict, name="envoy.filters.http.rbac"):
    data = {"stat_prefix": "in", "http_filters": [
        {"name": name, "typed_config": {"@type": RBAC_TYPE, **rbac}}, ROUTER]}
    protos.import_types_in(data)
    pb = protos.HttpConnectionManager()
    errors, warnings = [], []
    assert parse_dict(data, pb, "hcm", errors) == [], errors
    result = translate_http_filters(pb.http_filters, "hcm.http_filters", errors, warnings)
    return result, errors


def certificate_der(uri: str | None = None, dns: str | None = None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    sans = ([x509.UniformResourceIdentifier(uri)] if uri else []) + \
        ([x509.DNSName(dns)] if dns else [])
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def tls(uri=None, dns=None, sni=None, peer=True):
    return SimpleNamespace(peer_der=certificate_der(uri, dns) if peer else None, cache={},
                           server_name=sni)


def request(method="GET", path="/", headers=()):
    return Request(method, path, "svc", Headers(list(headers)))


def facts(req=None, local=("10.0.0.2", 8080), remote=("10.1.0.7", 4000), session=None,
          metadata=None, authn=False):
    """`authn`: the chain runs Istio's istio_authn, which writes io.istio.peer_principal."""
    state = spiffe_peer_principal(session) if authn else None
    return Facts(req if req is not None else request(), local, remote, remote, session, metadata,
                 state)


def engine(rules: dict):
    result, errors = translate({"rules": rules})
    assert errors == []
    return Engine(result[0]["config"]["rules"])


def test_istios_allow_policy_matches_method_path_and_peer_principal():
    e = engine(ISTIO_ALLOW)
    sleep = tls(SLEEP)
    assert e.decide(facts(request("GET", "/info/x?q=1"), session=sleep, authn=True)) == \
        (True, "ns[default]-policy[httpbin]-rule[0]")
    assert e.decide(facts(request("POST", "/data"), session=sleep, authn=True))[0]
    assert e.decide(facts(request("POST", "/data?x"), session=sleep, authn=True))[0]  # not path
    assert e.decide(facts(request("POST", "/info"), session=sleep, authn=True)) == (False, None)
    assert e.decide(facts(request("GET", "/info"), session=tls("spiffe://x/ns/a/sa/b"),
                          authn=True))[0] is False
    assert e.decide(facts(request("GET", "/info"), session=None, authn=True))[0] is False
    # Without istio_authn nothing writes the filter state: the TLS alone does not match.
    assert e.decide(facts(request("GET", "/info"), session=sleep))[0] is False


def test_deny_names_the_policy_that_matched_in_name_order_and_log_always_allows():
    rules = {"action": "DENY", "policies": {
        "b": {"permissions": [{"destination_port": 8080}], "principals": [{"any": True}]},
        "a": {"permissions": [{"not_rule": {"url_path": {"path": {"prefix": "/ok"}}}}],
              "principals": [{"direct_remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}}]}}}
    e = engine(rules)
    assert e.decide(facts(request(path="/x"))) == (False, "a")
    assert e.decide(facts(request(path="/ok"))) == (False, "b")
    assert e.decide(facts(request(path="/ok"), local=("10.0.0.2", 9090))) == (True, None)
    log = engine({**rules, "action": "LOG"})
    assert log.decide(facts(request(path="/x"))) == (True, "a")


def test_addresses_ports_headers_and_server_name():
    e = engine({"policies": {"p": {
        "permissions": [{"and_rules": {"rules": [
            {"destination_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}},
            {"destination_port_range": {"start": 8000, "end": 8081}},
            {"requested_server_name": {"suffix": ".svc"}},
            {"header": {"name": "x-team", "string_match": {"exact": "blue", "ignore_case": True}}}]}}],
        "principals": [{"or_ids": {"ids": [{"remote_ip": {"address_prefix": "192.168.0.1"}},
                                           {"source_ip": {"address_prefix": "10.1.0.0", "prefix_len": 24}}]}}]}}})
    good = facts(request(headers=[("x-team", "BLUE")]), session=tls(sni="a.svc"))
    assert e.decide(good)[0]
    assert not e.decide(facts(request(headers=[("x-team", "red")]), session=tls(sni="a.svc")))[0]
    assert not e.decide(facts(request(headers=[("x-team", "blue")]), session=tls(sni="a.other")))[0]
    assert not e.decide(facts(request(headers=[("x-team", "blue")]), local=("10.0.0.2", 8081),
                              session=tls(sni="a.svc")))[0]
    assert not e.decide(facts(request(headers=[("x-team", "blue")]), remote=("::1", 3),
                              session=tls(sni="a.svc")))[0]


def test_authenticated_tries_uri_sans_then_dns_sans_then_subject():
    def allows(principal, session):
        e = engine({"policies": {"p": {"permissions": [{"any": True}],
                                       "principals": [{"authenticated": principal}]}}})
        return e.decide(facts(session=session))[0]
    assert allows({"principal_name": {"exact": SLEEP}}, tls(SLEEP))
    assert allows({"principal_name": {"exact": "b.test"}}, tls("spiffe://a", "b.test"))
    assert allows({"principal_name": {"exact": "CN=peer"}}, tls())
    assert not allows({"principal_name": {"exact": SLEEP}}, tls("spiffe://other"))
    assert not allows({"principal_name": {"exact": SLEEP}}, None)
    assert allows({}, tls(peer=False))         # Envoy: any TLS connection
    assert not allows({}, None)


def test_older_istio_metadata_principal_is_what_istio_authn_wrote_and_jwt_claims_are_absent():
    """Istio 1.9/1.10 wrote an HTTP policy's principal on the istio_authn metadata, without
    "spiffe://", as the authn filter writes it: the metadata is read, not the certificate, so
    without the filter (no metadata) nothing matches, and the spiffe:// form never does."""
    bare = SLEEP[len("spiffe://"):]

    def policy(value, invert=False):
        return engine({"policies": {"p": {"permissions": [{"any": True}], "principals": [
            {"metadata": {"filter": "istio_authn", "path": [{"key": "source.principal"}],
                          "value": {"string_match": {"exact": value}}, "invert": invert}}]}}})
    written = {"istio_authn": {"source.principal": bare, "source.namespace": "default"}}
    assert policy(bare).decide(facts(session=tls(SLEEP), metadata=written))[0]
    assert not policy(SLEEP).decide(facts(session=tls(SLEEP), metadata=written))[0]
    assert not policy(bare).decide(facts(session=tls(SLEEP)))[0]          # no authn filter
    assert policy(bare, invert=True).decide(facts(session=tls(SLEEP)))[0]
    other = {"istio_authn": {"source.principal": "cluster.local/ns/o/sa/o"}}
    assert not policy(bare).decide(facts(session=tls("spiffe://o"), metadata=other))[0]
    claims = {"metadata": {"filter": "istio_authn", "path": [{"key": "request.auth.claims"}, {"key": "iss"}],
                           "value": {"list_match": {"one_of": {"string_match": {"exact": "x"}}}}}}
    e = engine({"policies": {"p": {"permissions": [{"any": True}], "principals": [claims]}}})
    assert not e.decide(facts(session=tls(SLEEP), metadata=written))[0]
    assert e.decide(facts(metadata={"istio_authn": {"request.auth.claims": {"iss": ["y", "x"]}}}))[0]


def test_the_peer_principal_filter_state_is_the_first_spiffe_uri_san():
    """istio/proxy's network istio_authn shares a SPIFFE URI SAN only: a peer whose URI SAN
    is no SPIFFE id has no io.istio.peer_principal."""
    urn = "urn:example:not-spiffe"
    e = engine({"policies": {"p": {"permissions": [{"any": True}], "principals": [
        {"filter_state": {"key": "io.istio.peer_principal", "string_match": {"exact": urn}}}]}}})
    assert not e.decide(facts(session=tls(urn), authn=True))[0]


@pytest.mark.parametrize("rbac, message", [
    ({"rules": {"policies": {"p": {"permissions": [{"any": True}], "principals": [{"any": True}],
                                   "condition": {"const_expr": {"bool_value": True}}}}}},
     "hcm.http_filters[0].typed_config.rules.policies[p].condition: not supported (CEL conditions"),
    ({"rules": {"policies": {"p": {"permissions": [{"any": True}], "principals": []}}}},
     "hcm.http_filters[0].typed_config.rules.policies[p].principals: must have at least 1 item"),
    ({"rules": {"policies": {"p": {"permissions": [{"any": True}],
                                   "principals": [{"direct_remote_ip": {"address_prefix": "nope"}}]}}}},
     "hcm.http_filters[0].typed_config.rules.policies[p].principals[0].direct_remote_ip.address_prefix: "
     "malformed IP address"),
])
def test_what_baton_cannot_evaluate_is_refused_by_path(rbac, message):
    result, errors = translate(rbac)
    assert result is None and errors[0].startswith(message), errors


def stream(req, route=None, session=None, authn=False):
    from baton.worker.proxy.http.stream_info import StreamInfo
    info = StreamInfo(req, 0.0, "HTTP/1.1", ("10.1.0.7", 4000), ("10.0.0.2", 8080))
    chain = SimpleNamespace(network_filters=({"type": "istio_authn"},) if authn else ())
    return SimpleNamespace(route=route, info=info, request=req,
                   conn=SimpleNamespace(peer=("10.1.0.7", 4000), tls=session, chain=chain))


def factory(rbac: dict, name="envoy.filters.http.rbac"):
    result, errors = translate(rbac, name)
    assert errors == []
    stats = Stats()
    return RbacFactory(result[0]["config"], SimpleNamespace(stats=stats, stat_prefix="in")), stats


def test_the_filter_answers_403_with_envoys_details_and_counts_both_engines():
    deny = {"action": "DENY", "policies": {"no-admin": {
        "permissions": [{"url_path": {"path": {"prefix": "/admin"}}}], "principals": [{"any": True}]}}}
    f, stats = factory({"rules": deny, "rules_stat_prefix": "r_", "shadow_rules": ISTIO_ALLOW,
                        "shadow_rules_stat_prefix": "istio_dry_run_allow_"})
    req = request("GET", "/admin/x")
    reply = f.create(stream(req)).on_request_headers(req, True)
    assert isinstance(reply, LocalReply) and reply.status == 403 and reply.body == b"RBAC: access denied"
    assert reply.details == "rbac_access_denied_matched_policy[no-admin]" and reply.flags == "UAEX"
    req = request("GET", "/info")
    assert f.create(stream(req, session=tls(SLEEP), authn=True)).on_request_headers(req, True) is None
    c = stats.counters
    assert (c["http.in.rbac.r_.allowed"], c["http.in.rbac.r_.denied"]) == (1, 1)
    assert (c["http.in.rbac.istio_dry_run_allow_.shadow_allowed"],
            c["http.in.rbac.istio_dry_run_allow_.shadow_denied"]) == (1, 1)


def test_an_allow_without_match_says_none_and_no_rules_enforce_nothing():
    f, _ = factory({"rules": {"policies": {}}})
    req = request()
    reply = f.create(stream(req)).on_request_headers(req, True)
    assert reply.details == "rbac_access_denied_matched_policy[none]"
    f, stats = factory({})
    assert f.create(stream(req)) is None
    assert stats.counters["http.in.rbac.allowed"] == 0


def test_a_routes_rbac_per_route_replaces_the_filters_rules():
    from baton.xds.http_filters_istio import translate_per_filter_config
    f, stats = factory({"rules": {"policies": {}}}, name="my-rbac")
    from google.protobuf import any_pb2
    protos.import_type("envoy.extensions.filters.http.rbac.v3.RBACPerRoute")
    per_route = protos.message_class("envoy.extensions.filters.http.rbac.v3.RBACPerRoute")()
    errors = []
    parse_dict({"rbac": {"rules": {"action": "DENY"}}}, per_route, "r", errors)
    any_pb = any_pb2.Any()
    any_pb.Pack(per_route)
    disabled = protos.message_class("envoy.extensions.filters.http.rbac.v3.RBACPerRoute")()
    off = any_pb2.Any()
    off.Pack(disabled)
    per_filter = translate_per_filter_config({"my-rbac": any_pb, "other": off}, "route", errors)
    assert errors == [] and set(per_filter) == {"my-rbac", "other"}
    route = SimpleNamespace(per_filter=(per_filter, {}))
    req = request()
    assert f.create(stream(req, route=route)).on_request_headers(req, True) is None   # DENY nothing
    assert stats.counters["http.in.rbac.allowed"] == 1
    route_off = SimpleNamespace(per_filter=({}, {"my-rbac": per_filter["other"]}))
    assert f.create(stream(req, route=route_off)) is None      # the vhost's: no rules
    assert f.create(stream(req)).on_request_headers(req, True).status == 403


def test_network_rbac_rides_a_tcp_proxy_chain_and_is_refused_before_another_terminal():
    from .test_istio_listeners import TCP, listener
    network = {"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": "tcp.",
        "rules": {}, "shadow_rules_stat_prefix": "istio_dry_run_allow_"}}
    spec, errors, _ = listener(filter_chains=[{"filters": [network, TCP]}])
    assert errors == []
    (entry,) = spec["filter_chains"][0]["network_filters"]
    assert entry["type"] == "envoy.filters.network.rbac" and entry["stat_prefix"] == "tcp."
    assert entry["rules"] == {"action": "ALLOW", "policies": []} and entry["shadow_rules"] is None
    hcm = {"name": "hcm", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "in", "route_config": {}, "http_filters": [ROUTER]}}
    spec, errors, _ = listener(filter_chains=[{"filters": [network, hcm]}])
    assert spec is None
    assert errors[0] == ("l.filter_chains[0].filters[0].typed_config: network RBAC runs on tcp_proxy "
                         "chains only in Baton (this chain ends in hcm)"), errors

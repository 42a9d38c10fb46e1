"""Istio 1.9 / 1.10's HTTP istio_authn (FilterConfig declared from Istio's field numbers):
what the dumps send is accepted, origin (JWT) authentication and undeclared fields are
refused by path, and the filter reads the peer's mTLS identity as istio/proxy's did (STRICT,
PERMISSIVE, peer_is_optional, the trust domain check, the istio_authn metadata)."""

from __future__ import annotations

from types import SimpleNamespace

from google.protobuf import any_pb2

from baton.worker.proxy.http.filter import LocalReply
from baton.worker.proxy.http.stream_info import StreamInfo
from baton.worker.proxy.istio.authn import AuthnFilter
from baton.xds import protos
from baton.xds.http_filters import translate_filter_config
from baton.xds.istio_filter_types import AUTHN_FILTER

from .test_istio_http_filters import ROUTER, T, translate_filters
from .test_rbac import request, tls

AUTHN = T + AUTHN_FILTER


def authn(**fields):
    return {"name": "istio_authn", "typed_config": {"@type": AUTHN, **fields}}


def test_what_istio_1_9_and_1_10_send_is_accepted():
    # The dumps: PERMISSIVE mTLS, the trust domain check skipped.
    result, errors, _ = translate_filters([
        authn(policy={"peers": [{"mtls": {"mode": "PERMISSIVE"}}]}, skip_validate_trust_domain=True),
        ROUTER])
    assert errors == []
    assert result[0] == {"name": "istio_authn", "config": {
        "mtls": "PERMISSIVE", "peer_is_optional": False, "trust_domains": None}}
    result, errors, _ = translate_filters([authn(policy={"peers": [{"mtls": {}}]}), ROUTER])
    assert result[0]["config"] == {"mtls": "STRICT", "peer_is_optional": False, "trust_domains": []}


def test_origin_authentication_and_undeclared_fields_are_refused_by_path():
    _, errors, _ = translate_filters([authn(policy={"origins": [{}], "origin_is_optional": True}),
                                      ROUTER])
    assert errors == ["hcm.http_filters[0].typed_config.policy.origins: origin (JWT) "
                      "authentication not supported"]
    # jwt_output_payload_locations (2), which Baton does not declare, sent as bytes.
    config = protos.message_class(AUTHN_FILTER)()
    config.policy.peers.add().mtls.mode = 1
    any_pb = any_pb2.Any(type_url=AUTHN, value=config.SerializeToString() + b"\x12\x00")
    errors = []
    assert translate_filter_config(any_pb, "istio_authn", "f", errors) is None
    assert errors == [f"f: field number 2 of {AUTHN_FILTER} not supported"]


def run(config, session):
    stream = SimpleNamespace(conn=SimpleNamespace(tls=session),
                             info=StreamInfo(request(), 0.0, "HTTP/1.1", None, None))
    result = AuthnFilter(stream, config).on_request_headers(stream.info.request, True)
    return result, stream.info.dynamic_metadata


SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def test_strict_needs_a_client_certificate_and_permissive_takes_any_connection():
    strict = {"mtls": "STRICT", "peer_is_optional": False, "trust_domains": None}
    refused, _ = run(strict, None)
    assert isinstance(refused, LocalReply) and (refused.status, refused.body) == (
        401, b"Peer authentication failed.")
    assert run({**strict, "peer_is_optional": True}, None) == (None, None)
    assert run({**strict, "mtls": "PERMISSIVE"}, None) == (None, None)
    result, metadata = run(strict, tls(SLEEP))
    assert result is None and metadata == {"istio_authn": {
        "source.principal": "cluster.local/ns/default/sa/sleep",
        "source.user": "cluster.local/ns/default/sa/sleep", "source.namespace": "default"}}


def test_the_peers_trust_domain_must_be_ours_unless_skipped():
    config = {"mtls": "PERMISSIVE", "peer_is_optional": False, "trust_domains": []}
    session = tls("spiffe://other.domain/ns/a/sa/b")
    session.local_uris = ["spiffe://cluster.local/ns/default/sa/details"]
    assert isinstance(run(config, session)[0], LocalReply)
    assert run({**config, "trust_domains": None}, session)[0] is None
    assert run({**config, "trust_domains": ["other.domain"]}, session)[0] is None


def test_the_trust_domain_check_fails_closed_without_spiffe_identities():
    """istio/proxy's validateTrustDomain: a check it cannot make fails. Our own certificate
    without a spiffe:// URI SAN, or a peer's URI that is not spiffe://, is not trusted."""
    config = {"mtls": "PERMISSIVE", "peer_is_optional": False, "trust_domains": []}
    ours_without_spiffe = tls(SLEEP)
    ours_without_spiffe.local_uris = []
    assert isinstance(run(config, ours_without_spiffe)[0], LocalReply)
    not_spiffe = tls("https://cluster.local/ns/a/sa/b")
    not_spiffe.local_uris = ["spiffe://cluster.local/ns/default/sa/details"]
    assert isinstance(run(config, not_spiffe)[0], LocalReply)
    assert isinstance(run({**config, "trust_domains": ["cluster.local"]}, not_spiffe)[0], LocalReply)
    same = tls(SLEEP)
    same.local_uris = ["spiffe://cluster.local/ns/default/sa/details"]
    assert run(config, same)[0] is None

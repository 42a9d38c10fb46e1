"""x-forwarded-client-cert modes (worker/proxy/http/xfcc.py), on the header list alone: what
each forward_client_cert_details mode does with a client's header, on a connection with and
without a client certificate. The element's exact bytes are checked against Envoy 1.40 in
tests/integration/test_https_differential.py."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from baton.worker.codecs.message import Headers
from baton.worker.proxy.http import xfcc

from ..tls_certs import SPIFFE_ID, leaf, make_ca, spiffe_leaf

CA = make_ca("ecdsa")
CLIENT = spiffe_leaf(CA, "ecdsa")
DIGEST = hashlib.sha256(CLIENT.cert.public_bytes(Encoding.DER)).hexdigest()


def session(certificate=CLIENT):
    der = certificate.cert.public_bytes(Encoding.DER) if certificate is not None else None
    return SimpleNamespace(peer_der=der, local_uris=["spiffe://td/proxy"],
                           trusted_cas=[CA.cert], cache={})


def apply(mode, tls, sent=("By=forged",), details=()):
    headers = Headers([("x-forwarded-client-cert", v) for v in sent] + [("a", "1")])
    present = {name for name, _ in headers.items}
    xfcc.mutate(headers, present, {"mode": mode, "details": list(details)} if mode else None, tls)
    return headers.get_all("x-forwarded-client-cert")


MINE = f"By=spiffe://td/proxy;Hash={DIGEST}"


@pytest.mark.parametrize("mode, with_cert, without_cert, plain", [
    (None, [], [], []),                                     # Envoy's default: SANITIZE
    ("SANITIZE", [], [], []),
    ("FORWARD_ONLY", ["By=forged"], [], []),
    ("APPEND_FORWARD", [f"By=forged,{MINE}"], [], []),
    ("SANITIZE_SET", [MINE], [], []),
    ("ALWAYS_FORWARD_ONLY", ["By=forged"], ["By=forged"], ["By=forged"]),
])
def test_modes(mode, with_cert, without_cert, plain):
    assert apply(mode, session()) == with_cert
    assert apply(mode, session(None)) == without_cert
    assert apply(mode, None) == plain


def test_set_without_a_header_sent_and_details_in_envoys_order():
    value = apply("APPEND_FORWARD", session(), sent=(), details=["dns", "uri", "subject"])
    assert value == [f'{MINE};Subject="{CLIENT.cert.subject.rfc4514_string()}";URI={SPIFFE_ID}']
    chained = apply("SANITIZE_SET", session(), details=["chain"])[0]
    assert chained.count("BEGIN%20CERTIFICATE") == 2       # the leaf, then the trusted CA
    server = leaf(CA, "ecdsa", dns=["a.example", "b.example"])
    assert apply("SANITIZE_SET", session(server), details=["dns", "uri"])[0].endswith(
        ";URI=;DNS=a.example;DNS=b.example")

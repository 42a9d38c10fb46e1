"""x-forwarded-client-cert, as Envoy's connection manager writes it
(ConnectionManagerUtility::mutateXfccRequestHeader).

    forward_client_cert_details      what happens to the header
      SANITIZE (Envoy's default)       removed, on every connection
      FORWARD_ONLY                     kept as the client sent it, on mTLS connections only
      APPEND_FORWARD                   this hop's element appended (",") on mTLS connections
      SANITIZE_SET                     replaced by this hop's element on mTLS connections
      ALWAYS_FORWARD_ONLY              kept as sent, whatever the connection
    (anything but ALWAYS_FORWARD_ONLY removes it when the client presented no certificate)

This hop's element: By=<URI SAN of our certificate> (one per SAN), Hash=<sha256 of the
client certificate, hex>, then what set_current_client_cert_details asks for, in Envoy's
order (checked against Envoy 1.40): Cert="<url-encoded PEM>", Chain="<url-encoded PEMs>",
Subject="<RFC 2253>", URI=<first URI SAN>, DNS=<each DNS SAN>. Envoy's Chain is the
verified chain, up to and including the trusted CA; Python's ssl (3.11) shows Baton only the
leaf, so the chain is rebuilt from the leaf and the listener's trusted_ca (intermediates the
client sent and trusted_ca lacks are missing). The element is computed once per connection
(kept in the TLS session's cache).
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

HEADER = "x-forwarded-client-cert"
SANITIZE, FORWARD_ONLY, APPEND_FORWARD = "SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD"
SANITIZE_SET, ALWAYS_FORWARD_ONLY = "SANITIZE_SET", "ALWAYS_FORWARD_ONLY"
DETAILS = ("cert", "chain", "subject", "uri", "dns")     # Envoy's order in the element


def mutate(headers, present, spec: dict | None, tls) -> None:
    """Apply `spec` ({"mode": ..., "details": [...]}, None for Envoy's default) to a request's
    headers; `present` is the set of header names; `tls` the connection's Session or None."""
    mode = spec["mode"] if spec is not None else SANITIZE
    if mode == ALWAYS_FORWARD_ONLY:
        return
    if mode == SANITIZE or tls is None or tls.peer_der is None:
        if HEADER in present:
            headers.remove(HEADER)
        return
    if mode == FORWARD_ONLY:
        return
    element = tls.cache.get(HEADER)
    if element is None:
        element = tls.cache[HEADER] = _element(tls, spec["details"])
    if mode == APPEND_FORWARD and HEADER in present:
        headers.set(HEADER, f"{headers.joined(HEADER)},{element}")
    else:
        headers.set(HEADER, element)


def _element(tls, details) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    der = tls.peer_der
    cert = x509.load_der_x509_certificate(der)
    parts = [f"By={uri}" for uri in tls.local_uris]
    parts.append(f"Hash={hashlib.sha256(der).hexdigest()}")
    uris = dns = ()
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        dns = sans.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    pem = quote(cert.public_bytes(Encoding.PEM).decode(), safe="")
    for detail in DETAILS:
        if detail not in details:
            continue
        if detail == "subject":
            parts.append(f'Subject="{cert.subject.rfc4514_string()}"')
        elif detail == "uri":
            parts.append(f"URI={uris[0] if uris else ''}")
        elif detail == "cert":
            parts.append(f'Cert="{pem}"')
        elif detail == "chain":
            chain = "".join(ca.public_bytes(Encoding.PEM).decode()
                            for ca in _issuers(cert, tls.trusted_cas))
            parts.append(f'Chain="{pem}{quote(chain, safe="")}"')
        else:
            parts += [f"DNS={name}" for name in dns]
    return ";".join(parts)


def _issuers(cert, trusted: list) -> list:
    """The trusted CAs above `cert`, nearest first, as a verified chain has them."""
    chain = []
    while cert.issuer != cert.subject and len(chain) < 8:
        cert = next((ca for ca in trusted if ca.subject == cert.issuer), None)
        if cert is None:
            break
        chain.append(cert)
    return chain

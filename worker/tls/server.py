"""One filter chain's TLS server side, built in the worker from the snapshot's plain `tls`
spec (xds/tls.py): the ssl.SSLContext OpenSSL handshakes with, its key log, the peer
certificate checks OpenSSL does not do (SAN matchers), and the listener's `ssl.*` stats.

    server = TlsServer(spec)
    server.declare_stats(f"listener.{stat_name}.", stats)     # Envoy's names, at 0
    hs = server.handshake()                 # a TlsHandshake (handover.py) for one connection
    failure = server.verify(hs.ssl_object)  # None, or the stat that counts why it is refused
    server.count_handshake(hs.ssl_object)   # ssl.handshake, ssl.ciphers.X, ssl.curves.Y...

The context only offers what Baton's record layer carries on after the handshake
(suites.py): TLS 1.2 and 1.3, AEAD suites. Certificates reach OpenSSL through memfds
(load_cert_chain takes paths only), so no key ever touches a disk.
"""

from __future__ import annotations

import ipaddress
import os
import ssl

from .handover import HandshakeFailed, TlsHandshake
from . import openssl
from .keylog import KeyLog
from .suites import TLS12_CIPHERS
from .tickets import resumption

# Envoy's listener ssl.* counters (checked against Envoy 1.40: all listed at 0 from the start).
SSL_COUNTERS = ("connection_error", "handshake", "session_reused", "no_certificate",
                "fail_verify_no_cert", "fail_verify_error", "fail_verify_san",
                "fail_verify_cert_hash")

# OpenSSL's reasons for refusing a client certificate -> Envoy's counter for it.
_VERIFY_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "fail_verify_no_cert",
    "CERTIFICATE_VERIFY_FAILED": "fail_verify_error",
}


class TlsServer:
    __slots__ = ("spec", "context", "keylog", "san_matchers", "stats", "scope", "local_uris",
                 "_trusted_cas", "__weakref__")

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.context = _context(spec)
        self.keylog = KeyLog(self.context)
        self.san_matchers = [(m["type"], _matcher(m["matcher"])) for m in spec["san_matchers"]]
        self.stats = None
        self.scope = ""
        # Our own certificate's URI SANs: XFCC's By= (the first certificate's, when there is
        # one per key type: SSLObject does not say which one a handshake used).
        self.local_uris = _uri_sans(spec["certificates"][0]["chain"]) if spec["certificates"] else []
        self._trusted_cas = None

    @property
    def trusted_cas(self) -> list:
        """trusted_ca's certificates (cryptography objects), read at first use (XFCC Chain=)."""
        if self._trusted_cas is None:
            from cryptography import x509
            pem = self.spec["trusted_ca"]
            self._trusted_cas = x509.load_pem_x509_certificates(pem.encode()) if pem else []
        return self._trusted_cas

    def __del__(self) -> None:
        # The last connection that handshook on this context is gone (a chain replaced by a
        # config update): its key log pipe can go too.
        keylog = getattr(self, "keylog", None)
        if keylog is not None:
            keylog.close()

    @property
    def handshake_timeout(self) -> float:
        return self.spec["handshake_timeout"]

    def declare_stats(self, listener_scope: str, stats) -> None:
        self.stats = stats
        self.scope = listener_scope + "ssl."
        for name in SSL_COUNTERS:
            stats.counters.setdefault(self.scope + name, 0)

    def count(self, name: str) -> None:
        if self.stats is not None:
            self.stats.counters[self.scope + name] += 1

    def count_session_error(self) -> None:
        """A session that ends on a TLS error after its handshake (a bad record, an alert, a
        renegotiation): Envoy counts ssl.connection_error twice for it, once for the read that
        failed and once for the shutdown after it (each drains the TLS library's error
        queue; checked against Envoy 1.40). A FIN without close_notify is not counted."""
        self.count("connection_error")
        self.count("connection_error")

    def handshake(self) -> TlsHandshake:
        return TlsHandshake(self.context, self.keylog, server_side=True)

    def failure_of(self, exc: HandshakeFailed) -> str:
        """The counter for a handshake OpenSSL refused."""
        return _VERIFY_REASONS.get(str(exc), "connection_error")

    def verify(self, obj: ssl.SSLObject) -> str | None:
        """After OpenSSL's handshake: the counter of the check the peer fails, or None."""
        der = obj.getpeercert(binary_form=True)
        if der is None or not self.san_matchers:
            return None
        names = _subject_alt_names(der)
        for san_type, test in self.san_matchers:
            for kind, value in names:
                if (san_type is None or san_type == kind) and test(value):
                    return None
        return "fail_verify_san"

    def count_handshake(self, obj: ssl.SSLObject) -> None:
        self.count("handshake")
        if obj.session_reused:
            self.count("session_reused")
        client_certificate = obj.getpeercert(binary_form=True) is not None
        if not client_certificate:
            self.count("no_certificate")
        self.count(f"ciphers.{obj.cipher()[0]}")
        self.count(f"versions.{obj.version()}")
        # As Envoy: the key exchange group, and the signature the client signed its
        # certificate's CertificateVerify with (none without a client certificate, so not
        # asked for: a ctypes call fewer per handshake).
        group = openssl.negotiated_group(obj)
        if group is not None:
            self.count(f"curves.{group}")
        sigalg = openssl.peer_signature_algorithm(obj) if client_certificate else None
        if sigalg is not None:
            self.count(f"sigalgs.{sigalg}")


# What a rotated secret changes in a spec (xds/secrets.py resolve_tls).
SECRET_MATERIAL = frozenset(("certificates", "trusted_ca", "san_matchers", "missing_secrets",
                             "session_ticket_keys"))


def only_secrets_differ(before: dict | None, after: dict | None) -> bool:
    """Whether two tls specs differ in their secrets' material alone (a rotation): the chain
    then takes a new TlsServer for new handshakes, and no connection is disturbed."""
    if not before or not after or before == after:
        return False
    keys = (before.keys() | after.keys()) - SECRET_MATERIAL
    return all(before.get(k) == after.get(k) for k in keys)


def _context(spec: dict) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion[spec["min_version"]]
    ctx.maximum_version = ssl.TLSVersion[spec["max_version"]]
    ctx.set_ciphers(":".join(spec["cipher_suites"]) if spec["cipher_suites"] else TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    for certificate in spec["certificates"]:
        with _memfd(certificate["chain"]) as chain, _memfd(certificate["key"]) as key:
            ctx.load_cert_chain(chain, key)
    if spec["ecdh_curve"]:
        ctx.set_ecdh_curve(spec["ecdh_curve"])
    if spec["alpn"]:
        ctx.set_alpn_protocols(spec["alpn"])
    if spec["trusted_ca"]:
        ctx.load_verify_locations(cadata=spec["trusted_ca"])
        # As in Envoy, SAN matchers make a client certificate required: nothing else could
        # satisfy them (checked against Envoy 1.40: fail_verify_no_cert).
        required = spec["require_client_certificate"] or bool(spec["san_matchers"])
        ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    resumption(ctx, spec)
    return ctx


class _memfd:
    """A path (/proc/self/fd/N) to `text` in memory, for as long as the `with` lasts."""

    def __init__(self, text: str) -> None:
        self.fd = os.memfd_create("baton-tls", os.MFD_CLOEXEC)
        os.write(self.fd, text.encode())

    def __enter__(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _matcher(spec: dict):
    from ..proxy.http.route_match import _string_matcher
    return _string_matcher(spec)


def _uri_sans(chain_pem: str) -> list[str]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    der = x509.load_pem_x509_certificate(chain_pem.encode()).public_bytes(Encoding.DER)
    return [value for kind, value in _subject_alt_names(der) if kind == "URI"]


def _subject_alt_names(der: bytes) -> list[tuple[str, str]]:
    """(type, value) for every SAN of a certificate, in Envoy's types and spellings."""
    from cryptography import x509
    try:
        cert = x509.load_der_x509_certificate(der)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return []
    names = [("DNS", v) for v in sans.get_values_for_type(x509.DNSName)]
    names += [("URI", v) for v in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    names += [("EMAIL", v) for v in sans.get_values_for_type(x509.RFC822Name)]
    names += [("IP_ADDRESS", str(ipaddress.ip_address(v)))
              for v in sans.get_values_for_type(x509.IPAddress)]
    return names

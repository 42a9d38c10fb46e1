"""A cluster's TLS client side (UpstreamTlsContext), built in the worker from the snapshot's
plain spec (xds/tls_upstream.py), and one client handshake from the first byte to Baton's
record layer (sans-IO).

    client = TlsClient(spec)
    client.declare_stats("cluster.NAME.", counters)    # Envoy's cluster ssl.* names, at 0
    connect = ClientConnect(client, sni, alpn)     # sni: the spec's, or auto_sni's Host
    wire = connect.start()                         # the ClientHello
    wire = connect.receive(data, eof)              # until connect.layer; HandshakeRefused

Why Baton's record layer on this side too: a tcp_proxy session whose upstream speaks TLS
must still move at a reload. OpenSSL (the `ssl` module, over MemoryBIOs: handover.py) does
the handshake; once it is done the session is plain values (state.py) that the handoff
carries with both sockets, exactly as a terminated downstream session is. Pooled HTTP
connections use the same handshake and layer (worker/tls/transport.py), so there is one TLS
client in Baton and one place where its checks and counts are made.

Envoy's client semantics (checked against Envoy 1.40):
- no trusted_ca: the server's certificate is not verified; with one, OpenSSL verifies the
  chain (a failure counts ssl.fail_verify_error) and Baton then matches the SANs
  (ssl.fail_verify_san, and the fatal alert certificate_unknown Envoy sends).
- ALPN: the context's alpn_protocols, else what the HTTP pool asks for ("h2" for an HTTP/2
  pool), else none.
- a refused handshake is a failed connect: the caller counts upstream_cx_connect_fail.
- secrets by reference (SDS, static_resources.secrets: xds/secrets.py) not yet known: no
  handshake at all, counted as client_ssl_socket_factory.upstream_context_secrets_not_ready
  (fail closed: without its validation context the server would go unverified). A rotated
  secret is a new spec, so a new TlsClient (worker/proxy/cluster.py): new handshakes use it,
  established sessions are the record layer's and do not notice.
- session resumption: up to max_session_keys sessions kept per SNI and offered again. A TLS
  1.2 session is complete at the end of the handshake and resumes; a TLS 1.3 ticket arrives
  after it, when the record layer (not OpenSSL) owns the session, so TLS 1.3 connections
  always do a full handshake (a difference from Envoy, README).
"""

from __future__ import annotations

import ssl
from collections import OrderedDict, deque

from .accept import HandshakeRefused, HandshakeSteps
from .handover import HandoverError, HandshakeFailed, TlsHandshake
from .keylog import KeyLog
from .records import CERTIFICATE_UNKNOWN
from .server import SSL_COUNTERS, _matcher, _memfd, _subject_alt_names
from .suites import TLS12_CIPHERS

# Envoy lists these for every TLS cluster too (at 0 without SDS).
FACTORY_COUNTERS = ("client_ssl_socket_factory.downstream_context_secrets_not_ready",
                    "client_ssl_socket_factory.ssl_context_update_by_sds",
                    "client_ssl_socket_factory.upstream_context_secrets_not_ready")
MAX_SNI_SESSIONS = 1024
SECRETS_NOT_READY = "secrets_not_ready"     # a refusal's counter, outside ssl.*


class _ExchangeAlpn(tuple):
    """An empty ALPN wish that says "a tcp_proxy connection" (alpn_for)."""


EXCHANGE_ALPN = _ExchangeAlpn()


class TlsClient:
    """One UpstreamTlsContext: an SSLContext per ALPN list offered (Python sets ALPN on the
    context, not per connection), their key logs, the SAN checks and the cluster's ssl.*."""

    __slots__ = ("spec", "san_matchers", "stats", "scope", "cluster_scope", "missing",
                 "_contexts", "_sessions")

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.san_matchers = [(m["type"], _matcher(m["matcher"])) for m in spec["san_matchers"]]
        self.stats = None
        self.scope = self.cluster_scope = ""
        self.missing = list(spec.get("missing_secrets") or ())   # secrets not yet known
        self._contexts: dict = {}           # ALPN tuple -> (SSLContext, KeyLog)
        # (ALPN list, SNI) -> deque of SSLSession: a session belongs to the context (one per
        # ALPN list) that made it, and Python refuses it to any other. Contexts (each with a
        # key log pipe) are made at the first handshake that needs them: a mesh has hundreds
        # of TLS clusters per worker, most of them never dialled.
        self._sessions: OrderedDict = OrderedDict()

    def close(self) -> None:
        for _context, keylog in self._contexts.values():
            keylog.close()
        self._contexts.clear()

    def __del__(self) -> None:
        contexts = getattr(self, "_contexts", None)
        if contexts:
            self.close()

    @property
    def sni(self) -> str | None:
        return self.spec["sni"]

    def declare_stats(self, cluster_scope: str, counters: dict) -> None:
        """Count into `counters` (the worker's) under cluster.NAME.ssl.*, listed at 0."""
        self.stats = counters
        self.cluster_scope = cluster_scope
        self.scope = cluster_scope + "ssl."
        for name in SSL_COUNTERS:
            counters.setdefault(self.scope + name, 0)
        for name in FACTORY_COUNTERS:
            counters.setdefault(cluster_scope + name, 0)

    def count(self, name: str) -> None:
        counters = self.stats
        if counters is not None:
            key = self.scope + name if name != SECRETS_NOT_READY else \
                self.cluster_scope + "client_ssl_socket_factory.upstream_context_secrets_not_ready"
            counters[key] = counters.get(key, 0) + 1

    def alpn_for(self, wanted: tuple) -> tuple:
        """The ALPN list offered: the context's own, else the one the caller wants. A
        tcp_proxy connection (EXCHANGE_ALPN) offers Istio's metadata exchange protocol too,
        which an HTTP pool's connection never does (xds/cluster_upstream.py)."""
        if wanted is EXCHANGE_ALPN and self.spec.get("exchange_alpn"):
            return tuple(self.spec["exchange_alpn"])
        return tuple(self.spec["alpn"]) or tuple(wanted)

    def context_for(self, alpn: tuple):
        entry = self._contexts.get(alpn)
        if entry is None:
            context = _context(self.spec, alpn)
            entry = self._contexts[alpn] = (context, KeyLog(context))
        return entry

    def handshake(self, sni: str | None, alpn: tuple = ()) -> TlsHandshake:
        offered = self.alpn_for(alpn)
        context, keylog = self.context_for(offered)
        return TlsHandshake(context, keylog, server_side=False, server_hostname=sni,
                            session=self._session_for((offered, sni)))

    # -- session resumption (max_session_keys) ----------------------------------------------

    def _session_for(self, key):
        """`key`: (the ALPN list offered, SNI)."""
        if not self.spec["max_session_keys"]:
            return None
        kept = self._sessions.get(key)
        return kept[-1] if kept else None

    def remember(self, sni, obj: ssl.SSLObject) -> None:
        keys = self.spec["max_session_keys"]
        session = obj.session
        if not keys or session is None or not session.has_ticket and not session.id:
            return
        if obj.version() == "TLSv1.3":
            return          # its ticket comes after the handover: never complete here
        offered = next((alpn for alpn, (context, _) in self._contexts.items()
                        if context is obj.context), None)
        key = (offered, sni)
        kept = self._sessions.get(key)
        if kept is None:
            if len(self._sessions) >= MAX_SNI_SESSIONS:
                self._sessions.popitem(last=False)
            kept = self._sessions[key] = deque(maxlen=keys)
        if not kept or kept[-1].id != session.id:
            kept.append(session)

    # -- checks and counts ----------------------------------------------------------------

    def failure_of(self, exc: HandshakeFailed) -> str:
        return "fail_verify_error" if str(exc) == "CERTIFICATE_VERIFY_FAILED" else "connection_error"

    def verify(self, obj, expected_san: str | None = None) -> str | None:
        """After OpenSSL's handshake: the counter of the check the server fails, or None.
        `expected_san`: auto_san_validation's host, checked instead of the matchers."""
        if self.spec["trusted_ca"] is None and expected_san is None:
            return None
        matchers = self.san_matchers
        if expected_san is not None:
            matchers = [(None, lambda value, want=expected_san.lower(): _dns_match(want, value))]
        if not matchers:
            return None
        der = obj.getpeercert(binary_form=True)
        names = _subject_alt_names(der) if der is not None else []
        for san_type, test in matchers:
            for kind, value in names:
                if (san_type is None or san_type == kind) and test(value):
                    return None
        return "fail_verify_san"

    def count_handshake(self, obj) -> None:
        self.count("handshake")
        if obj.session_reused:
            self.count("session_reused")
        self.count(f"ciphers.{obj.cipher()[0]}")
        self.count(f"versions.{obj.version()}")


class ClientConnect(HandshakeSteps):
    """One client handshake over any transport: bytes in, bytes out, then `layer`."""

    __slots__ = ("client", "sni", "expected_san", "handshake", "layer")
    peer = "server"

    def __init__(self, client: TlsClient, sni: str | None = None, alpn: tuple = (),
                 expected_san: str | None = None) -> None:
        self.client = client
        self.sni = sni
        self.expected_san = expected_san
        self.handshake = client.handshake(sni, alpn)
        self.layer = None

    def start(self) -> bytes:
        if self.client.missing:
            raise HandshakeRefused(SECRETS_NOT_READY, "secrets not yet received: "
                                   + ", ".join(self.client.missing))
        return self.receive(b"", False)

    def _failure_of(self, exc: HandshakeFailed) -> str:
        return self.client.failure_of(exc)

    def _hand_over(self, out: bytes) -> bytes:
        obj = self.handshake.ssl_object
        failure = self.client.verify(obj, self.expected_san)
        try:
            layer = self.handshake.handover()
        except HandoverError as exc:
            raise HandshakeRefused("connection_error", f"handover: {exc}") from None
        if failure is not None:
            # OpenSSL accepted the chain, its SANs do not match: the alert Envoy sends.
            raise HandshakeRefused(failure, "server certificate SAN mismatch",
                                   layer.abort(CERTIFICATE_UNKNOWN, "SAN mismatch"))
        self.client.count_handshake(obj)
        self.client.remember(self.sni, obj)
        self.layer = layer
        return out


def _dns_match(want: str, san: str) -> bool:
    """auto_san_validation: the Host against a DNS SAN, wildcards in the first label."""
    san = san.lower()
    if san == want:
        return True
    return san.startswith("*.") and "." in want and want.split(".", 1)[1] == san[2:]


def _context(spec: dict, alpn: tuple) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False          # SANs are Baton's check (verify), as Envoy's
    ctx.minimum_version = ssl.TLSVersion[spec["min_version"]]
    ctx.maximum_version = ssl.TLSVersion[spec["max_version"]]
    ctx.set_ciphers(":".join(spec["cipher_suites"]) if spec["cipher_suites"] else TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if not spec["max_session_keys"]:
        ctx.options |= ssl.OP_NO_TICKET
    for certificate in spec["certificates"]:
        with _memfd(certificate["chain"]) as chain, _memfd(certificate["key"]) as key:
            ctx.load_cert_chain(chain, key)
    if spec["ecdh_curve"]:
        ctx.set_ecdh_curve(spec["ecdh_curve"])
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if spec["trusted_ca"]:
        ctx.load_verify_locations(cadata=spec["trusted_ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE     # Envoy: no validation_context, no verification
    return ctx

"""A filter's ALPN list for a request's upstream TLS connection (Envoy's filter state
envoy.network.application_protocols, which Istio's istio.alpn sets: worker/proxy/istio/alpn.py).

The router asks the pool manager for a pool by it (`alpn_override(stream.info)`), so
connections offering different lists never share a pool, and the pool's handshake offers
the list in place of the TLS context's own, as Envoy's transport socket options override it.
"""

from __future__ import annotations

APPLICATION_PROTOCOLS = "envoy.network.application_protocols"


def alpn_override(info):
    """The ALPN list a filter set for this request's upstream TLS (Envoy's filter state
    envoy.network.application_protocols; Istio's istio.alpn sets it), or None."""
    state = info.dynamic_metadata
    return state.get(APPLICATION_PROTOCOLS) if state else None


class AlpnOverride:
    """A pool's TLS client offering a filter's ALPN list in place of the context's own (as
    Envoy's transport socket options override it): the client's own handshake, whose
    alpn_for answers the list, without session resumption; everything else is the
    client's."""

    __slots__ = ("client", "alpn")

    def __init__(self, client, alpn: tuple):
        self.client = client
        self.alpn = alpn

    def __getattr__(self, name):
        return getattr(self.client, name)

    def alpn_for(self, wanted: tuple) -> tuple:
        return self.alpn

    # No session resumption on an override's connections (the client keeps its sessions per
    # ALPN list, as each list has its own SSLContext; an override's list resumes nothing).
    def _session_for(self, sni):
        return None

    def remember(self, sni, ssl_object) -> None:
        pass

    def handshake(self, sni, alpn=()):
        from ...tls.client import TlsClient
        return TlsClient.handshake(self, sni, alpn)

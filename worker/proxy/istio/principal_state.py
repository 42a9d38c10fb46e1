"""Istio's io.istio.peer_principal / local_principal filter state of a connection's own TLS.

Only istio/proxy's network istio_authn filter (io.istio.network.authn.Config,
source/extensions/filters/network/istio_authn/config.cc) writes them: when the TLS handshake
completes and the peer presented a certificate, the first spiffe:// URI SAN of the peer's
and of the local certificate, shared with the upstream connection once. A chain without
that filter has no such state, whatever its TLS; RBAC's `authenticated` principals read the
TLS itself and are no concern of this module. An internal connection may carry the state its
connecting side shared instead (internal_listener.peer_principal).
"""

from __future__ import annotations

from types import SimpleNamespace

from ..rbac_engine import spiffe_peer_principal

FILTER = "istio_authn"      # the type xds/network_filters.py gives the filter in a chain


def runs_istio_authn(chain) -> bool:
    return any(entry.get("type") == FILTER for entry in getattr(chain, "network_filters", ()))


def _session(conn):
    """What spiffe_peer_principal reads of `conn`'s TLS: an HTTP connection's Session, or a
    TLS proxy's record layer info (whose `tls` is its server config, no session)."""
    layer = getattr(conn, "layer", None)
    if layer is not None:
        server = getattr(conn, "tls", None)
        return SimpleNamespace(peer_der=layer.info.get("peer_certificate"), cache={},
                               local_uris=getattr(server, "local_uris", None))
    tls = getattr(conn, "tls", None)
    return tls if hasattr(tls, "peer_der") else None


def own_principals(conn) -> tuple[str | None, str | None]:
    """(peer, local) SPIFFE ids as `conn`'s chain's istio_authn writes them, (None, None)
    without that filter, TLS, or a peer certificate."""
    if not runs_istio_authn(getattr(conn, "chain", None)):
        return None, None
    tls = _session(conn)
    peer = spiffe_peer_principal(tls)
    if peer is None and (tls is None or tls.peer_der is None):
        return None, None
    local = next((uri for uri in getattr(tls, "local_uris", None) or ()
                  if uri.startswith("spiffe://")), None)
    return peer, local

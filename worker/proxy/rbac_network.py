"""envoy.filters.network.rbac on a tcp_proxy chain: Istio's AuthorizationPolicy for TCP.

As Envoy's filter (enforcement_type ONE_TIME_ON_FIRST_BYTE, its onData) it decides on the
client's first bytes (or its FIN), not when the connection starts: tcp_proxy connects
upstream at once, and what the upstream sends first (a server-first protocol's greeting)
reaches the client before any decision; the client's first read (tcp_proxy.py's gate on its
client -> upstream pump, tls_proxy.py's first plaintext after the handshake, or the bytes an
inspector already read) asks `allows(conn)`. Denied: `<stat_prefix>rbac.denied` counts and
the connection is closed, the client's bytes never sent upstream. Allowed:
`...rbac.allowed`; shadow rules count shadow_allowed / shadow_denied as in the HTTP filter
(http/rbac.py Engines). A client that never sends is never decided, as in Envoy
(test_differential_rbac.py). A tcp_proxy with tunneling_config still decides when the
connection starts. CONTINUOUS enforcement asks the same question again on each read in
Envoy, with the same answer for these facts. delay_deny is not applied.
"""

from __future__ import annotations

from .http.rbac import Engines, stat_prefix_join
from .internal_listener import peer_principal
from .rbac_engine import Facts

TYPE = "envoy.filters.network.rbac"
# The connection kinds that decide on the client's first bytes (tcp_proxy.py, tls_proxy.py).
ON_FIRST_BYTES = ("tcp", "tls")


class _TlsFacts:
    """What the RBAC matchers read of a TLS session, from a record layer's info."""

    __slots__ = ("peer_der", "server_name", "cache")

    def __init__(self, info: dict):
        self.peer_der = info.get("peer_certificate")
        self.server_name = info.get("server_name")
        self.cache: dict = {}


def _engines(conn):
    """The chain's network RBAC filters' engines, built once per chain (kept on it, so they
    go with it when a config update replaces the chain)."""
    chain = conn.chain
    if chain.rbac_engines is None:
        engines = []
        for entry in chain.network_filters:
            if entry.get("type") == TYPE:
                prefix = stat_prefix_join("", entry["stat_prefix"]) + "rbac."
                engines.append(Engines(entry, prefix, conn.stats.counters))
        chain.rbac_engines = engines
    return chain.rbac_engines


def gated(conn) -> bool:
    """Whether `conn`'s chain has a network RBAC filter to ask on its first bytes."""
    return conn.kind in ON_FIRST_BYTES and bool(_engines(conn))


def allows(conn) -> bool:
    engines = _engines(conn)
    if not engines:
        return True
    layer = getattr(conn, "layer", None)
    tls = _TlsFacts(layer.info) if layer is not None else None
    try:
        local = conn.original or conn.client.getsockname()[:2]
    except OSError:
        local = None
    facts = Facts(None, local, conn.peer, conn.peer, tls, None, peer_principal(conn))
    counters = conn.stats.counters
    return all(e.check(facts, counters)[0] for e in engines)

"""envoy.filters.network.rbac on a tcp_proxy chain: Istio's AuthorizationPolicy for TCP.

tcp_proxy.py asks `allows(conn)` when a connection starts (after the TLS handshake, when
Baton terminates TLS), once it has picked a cluster and before it connects. Denied:
`<stat_prefix>rbac.denied` counts and the connection is closed without an upstream. Allowed: `...rbac.allowed`; shadow rules
count shadow_allowed / shadow_denied as in the HTTP filter (http/rbac.py Engines).

Difference from Envoy: Envoy decides on the connection's first bytes from the client
(enforcement_type ONE_TIME_ON_FIRST_BYTE; its tcp_proxy has connected upstream by then);
Baton decides when the connection starts, from the same facts (no network policy looks at
the bytes), so a denied client never reaches the upstream, and a server-first protocol's
greeting is not passed to it. CONTINUOUS enforcement asks the same question again on each
read in Envoy, with the same answer for these facts. delay_deny is not applied.
"""

from __future__ import annotations

from .http.rbac import Engines, stat_prefix_join
from .rbac_engine import Facts

TYPE = "envoy.filters.network.rbac"


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
    facts = Facts(None, local, conn.peer, conn.peer, tls)
    counters = conn.stats.counters
    return all(e.check(facts, counters)[0] for e in engines)

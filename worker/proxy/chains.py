"""Choosing a listener's filter chain, as Envoy's FilterChainMatch does (pure logic).

Criteria are applied in Envoy's order: destination port, server name (SNI), transport
protocol, application protocols. At each step the chains that name a matching value win over
those that leave the criterion unset; chains that name only other values drop out. An exact
server name beats a wildcard (`*.example.com`), and a longer wildcard beats a shorter one.
Whatever is left first is the answer; nothing left means "no filter chain match".
"""

from __future__ import annotations


def _narrow(candidates, key, matches):
    named = [c for c in candidates if (c.match or {}).get(key) is not None and matches(c.match[key])]
    if named:
        return named
    return [c for c in candidates if (c.match or {}).get(key) is None]


def _server_name_score(patterns, name: str | None) -> int:
    """How well `name` matches a list of server names: 0 = no match; exact beats wildcard."""
    if not name:
        return 0
    best = 0
    for pattern in patterns:
        if pattern == name:
            return 1 << 16
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            best = max(best, len(pattern))
    return best


def select(chains, destination_port: int | None, transport: str = "raw_buffer",
           protocols=(), server_name: str | None = None):
    candidates = list(chains)
    candidates = _narrow(candidates, "destination_port", lambda port: port == destination_port)
    scored = [(c, _server_name_score(c.match["server_names"], server_name)) for c in candidates
              if (c.match or {}).get("server_names")]
    best = max((score for _, score in scored), default=0)
    if best:
        candidates = [c for c, score in scored if score == best]
    else:
        candidates = [c for c in candidates if not (c.match or {}).get("server_names")]
    candidates = _narrow(candidates, "transport_protocol", lambda t: t == transport)
    candidates = _narrow(candidates, "application_protocols", lambda names: bool(set(names) & set(protocols)))
    return candidates[0] if candidates else None

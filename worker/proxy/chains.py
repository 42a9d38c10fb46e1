"""Choosing a listener's filter chain, as Envoy's FilterChainMatch does (pure logic).

Criteria are applied in Envoy's order: destination port, destination IP (prefix_ranges),
server name (SNI), transport protocol, application protocols, direct source IP, source type,
source IP (source_prefix_ranges), source port. At each step the chains that name a matching
value win over those that leave the criterion unset; chains that name only other values drop
out, and there is no going back to an earlier step (Envoy's lookup is a tree). An exact server
name beats a wildcard (`*.example.com`), a longer wildcard beats a shorter one, and a longer
IP prefix beats a shorter one. Whatever is left first is the answer; nothing left means "no
filter chain match", and then the listener's default_filter_chain (if any) serves.

The default_filter_chain is in the list too (its spec has "default": True) and never matches.
"""

from __future__ import annotations

import ipaddress


def _narrow(candidates, key, matches):
    named = [c for c in candidates if (c.match or {}).get(key) is not None and matches(c.match[key])]
    if named:
        return named
    return [c for c in candidates if (c.match or {}).get(key) is None]


def _best(candidates, key, score):
    """Keep the chains whose `key` scores highest (> 0); with none, those without `key`."""
    scored = [(c, score(c.match[key])) for c in candidates if (c.match or {}).get(key)]
    best = max((s for _, s in scored), default=0)
    if best:
        return [c for c, s in scored if s == best]
    return [c for c in candidates if not (c.match or {}).get(key)]


def _server_name_score(name: str | None):
    """How well `name` matches a list of server names: 0 = no match; exact beats wildcard."""
    def score(patterns) -> int:
        if not name:
            return 0
        best = 0
        for pattern in patterns:
            if pattern == name:
                return 1 << 16
            if pattern.startswith("*.") and name.endswith(pattern[1:]):
                best = max(best, len(pattern))
        return best
    return score


def _prefix_score(ip):
    """The longest matching prefix of [network, length] ranges, plus 1 (0 = no match)."""
    def score(ranges) -> int:
        if ip is None:
            return 0
        best = 0
        for network, length in ranges:
            net = _network(network, length)
            if net.version == ip.version and ip in net:
                best = max(best, length + 1)
        return best
    return score


_NETWORKS: dict = {}


def _network(address: str, length: int):
    net = _NETWORKS.get((address, length))
    if net is None:
        net = _NETWORKS[(address, length)] = ipaddress.ip_network(f"{address}/{length}")
    return net


def _ip(address):
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    # An IPv4 peer on a dual-stack socket: match it as IPv4, as Envoy does.
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


def select(chains, destination_port: int | None, transport: str = "raw_buffer",
           protocols=(), server_name: str | None = None, destination_ip: str | None = None,
           source: tuple | None = None):
    """-> the chain for a connection, or None. `source` is the peer's (address, port)."""
    candidates = [c for c in chains if not _is_default(c)]
    candidates = _narrow(candidates, "destination_port", lambda port: port == destination_port)
    candidates = _best(candidates, "prefix_ranges", _prefix_score(_ip(destination_ip)))
    candidates = _best(candidates, "server_names", _server_name_score(server_name))
    candidates = _narrow(candidates, "transport_protocol", lambda t: t == transport)
    candidates = _narrow(candidates, "application_protocols",
                         lambda names: bool(set(names) & set(protocols)))
    source_ip = _ip(source[0]) if source else None
    candidates = _best(candidates, "direct_source_prefix_ranges", _prefix_score(source_ip))
    local = source_ip is not None and (source_ip.is_loopback or source_ip == _ip(destination_ip))
    candidates = _narrow(candidates, "source_type",
                         lambda kind: kind == ("SAME_IP_OR_LOOPBACK" if local else "EXTERNAL"))
    candidates = _best(candidates, "source_prefix_ranges", _prefix_score(source_ip))
    candidates = _narrow(candidates, "source_ports",
                         lambda ports: source is not None and source[1] in ports)
    if candidates:
        return candidates[0]
    return next((c for c in chains if _is_default(c)), None)


def _is_default(chain) -> bool:
    return bool((getattr(chain, "spec", None) or {}).get("default"))

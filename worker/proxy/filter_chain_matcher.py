"""A listener's filter_chain_matcher walked per connection (pure logic): the tree that
xds/matcher_tree.py translates, evaluated with Envoy's matcher semantics, to the name of a
filter chain (or None: no match, so the default_filter_chain or a closed connection).

- A tree looks its input up: exact_match_map by the whole value; prefix_match_map longest
  prefix first, then shorter ones when the longer one's nested matcher does not match; xds's
  IPMatcher most specific range first, then less specific ones unless they are `exclusive`.
- A list takes the first entry whose predicate holds and whose on_match resolves.
- A nested matcher that does not match falls back to the enclosing matcher's on_no_match;
  an input with no value (no SNI, no application protocol, a remote source type) goes
  straight to on_no_match.

The inputs' values are strings as Envoy gives them: the destination port in decimal,
`source_type` "local" for a loopback or same-IP peer (nothing otherwise), the application
protocols each single-quoted and joined with "," ("'h2c'", "'http/1.1'").
"""

from __future__ import annotations

import ipaddress

from .http.route_match import _string_matcher


def connection_values(transport, protocols, server_name, local, source) -> dict:
    """The inputs' values for one connection: `local` and `source` are (ip, port)."""
    source_ip = source[0] if source else None
    same = False
    if source_ip:
        try:
            peer = ipaddress.ip_address(source_ip.split("%", 1)[0])
            same = peer.is_loopback or (local is not None and source_ip == local[0])
        except ValueError:
            pass
    return {"destination_ip": local[0] if local else None,
            "destination_port": str(local[1]) if local else None,
            "source_ip": source_ip, "direct_source_ip": source_ip,
            "source_port": str(source[1]) if source else None,
            "source_type": "local" if same else None,
            "server_name": server_name or None,
            "transport_protocol": transport or None,
            "application_protocol": ",".join(f"'{p}'" for p in protocols) or None}


class ChainMatcher:
    """One compiled matcher: select(values) -> a chain name or None."""

    __slots__ = ("input", "exact", "prefixes", "ranges", "entries", "on_no_match")

    def __init__(self, spec: dict):
        self.on_no_match = _on_match(spec.get("on_no_match"))
        self.input, self.exact, self.prefixes, self.ranges, self.entries = None, None, None, None, None
        tree = spec.get("tree")
        if tree is not None:
            self.input = tree["input"]
            if "exact" in tree:
                self.exact = {k: _on_match(v) for k, v in tree["exact"].items()}
            elif "prefix" in tree:
                self.prefixes = sorted(((k, _on_match(v)) for k, v in tree["prefix"].items()),
                                       key=lambda kv: -len(kv[0]))
            else:
                self.ranges = [([ipaddress.ip_network(f"{a}/{n}", strict=False) for a, n in cidrs],
                                _on_match(on_match), exclusive)
                               for cidrs, on_match, exclusive in tree["ip"]]
        else:
            self.entries = [(_predicate(p), _on_match(m)) for p, m in spec.get("list", ())]

    def select(self, values: dict) -> str | None:
        found = self._match(values)
        if found is None and self.on_no_match is not None:
            found = self.on_no_match(values)
        return found

    def _match(self, values):
        if self.entries is not None:
            for predicate, on_match in self.entries:
                if predicate(values):
                    found = on_match(values)
                    if found is not None:
                        return found
            return None
        value = values.get(self.input)
        if value is None:
            return None
        if self.exact is not None:
            on_match = self.exact.get(value)
            return on_match(values) if on_match is not None else None
        if self.prefixes is not None:
            for prefix, on_match in self.prefixes:
                if value.startswith(prefix):
                    found = on_match(values)
                    if found is not None:
                        return found
            return None
        return self._match_ip(value, values)

    def _match_ip(self, value, values):
        try:
            ip = ipaddress.ip_address(value.split("%", 1)[0])
        except ValueError:
            return None
        ip = ip.ipv4_mapped or ip if ip.version == 6 else ip
        hits = sorted(((max(n.prefixlen for n in nets if n.version == ip.version and ip in n),
                        on_match, exclusive) for nets, on_match, exclusive in self.ranges
                       if any(n.version == ip.version and ip in n for n in nets)),
                      key=lambda hit: -hit[0])
        for i, (_, on_match, exclusive) in enumerate(hits):
            if i and exclusive:         # a more specific range exists: not considered
                continue
            found = on_match(values)
            if found is not None:
                return found
        return None


def _on_match(spec):
    if spec is None:
        return None
    if "chain" in spec:
        name = spec["chain"]
        return lambda values: name
    return ChainMatcher(spec["matcher"]).select


def _predicate(spec):
    if "single" in spec:
        key, matcher = spec["single"]
        test = _string_matcher(matcher)
        return lambda values: values.get(key) is not None and test(values[key])
    if "not" in spec:
        inner = _predicate(spec["not"])
        return lambda values: not inner(values)
    parts = [_predicate(p) for p in spec.get("and", spec.get("or", ()))]
    if "and" in spec:
        return lambda values: all(p(values) for p in parts)
    return lambda values: any(p(values) for p in parts)


def select_chain(listener_matcher: ChainMatcher, chains, values: dict):
    """The chain the matcher names (by name among `chains`), else the default_filter_chain,
    else None: Envoy's "no filter chain with the given name" is a failed match."""
    name = listener_matcher.select(values)
    if name is not None:
        for chain in chains:
            if chain.spec.get("name") == name and not chain.spec.get("default"):
                return chain
    return next((c for c in chains if c.spec.get("default")), None)

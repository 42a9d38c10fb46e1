"""A route's hash_policy: the 64-bit key ring hash and Maglev balancers pick a host by.

Keys are XXH64 (seed 0) digests of the hashed value, Envoy's own hash, so a key picks the same
ring hash / Maglev host here as in Envoy; several policies are combined as Envoy combines them
(rotate left by one, xor).
"""

from __future__ import annotations

from ..lb import xxhash64
from .route_match import parse_query


def hash_key(policies, request, downstream_remote_ip: str | None) -> int | None:
    """The hash from `policies` ([(kind, name, terminal)], Route.hash_policies), or None (then
    the balancer picks as if no hash policy were set)."""
    result = None
    for kind, name, terminal in policies:
        value = None
        if kind == "header":
            if name[0] == ":":
                value = request.get(name)
            else:
                values = request.headers.get_all(name)
                if values:
                    value = values[0] if len(values) == 1 else "\x00".join(sorted(values))
        elif kind == "cookie":
            value = _cookie(request.headers, name)
        elif kind == "source_ip":
            value = downstream_remote_ip or None
        elif kind == "query_parameter":
            value = parse_query(request.query, decode=False).get(name)
        if value is not None:
            new = _hash64(value)
            result = new if result is None else (
                ((result << 1) | (result >> 63)) & _MASK64) ^ new
        if terminal and result is not None:
            break
    return result


_MASK64 = (1 << 64) - 1


def _hash64(value: str) -> int:
    # Envoy's hash (xxHash64, seed 0): the same key picks the same ring hash / Maglev host
    # in Baton as in Envoy.
    return xxhash64(value.encode("latin-1", "replace"))


def _cookie(headers, name):
    for value in headers.get_all("cookie"):
        for item in value.split(";"):
            key, sep, val = item.strip().partition("=")
            if sep and key == name:
                if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
                    val = val[1:-1]
                return val
    return None

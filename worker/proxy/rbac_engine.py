"""Envoy's RBAC engine: does a request (or a connection) match a set of policies (pure logic).

    engine = Engine(rules)                  rules as xds/rbac.py translates them
    allowed, policy = engine.decide(facts)  policy: the matched policy's name, or None

`facts` is what a policy may look at (Facts below): the request head (None for the network
filter, whose header matchers then see no header), the local address (destination ip and
port), the direct peer and the client address the connection manager settled on, the TLS
session (peer certificate, SNI).

Actions, as Envoy's RoleBasedAccessControlEngineImpl: ALLOW allows when a policy matches;
DENY denies when one matches (and names it); LOG always allows (the filter counts whether a
policy matched). A policy matches when any of its permissions and any of its principals
match. Policies are tried in name order, the first match wins.

Permission / principal keys: any, and, or, not, header (fault.py's header matcher, Envoy's
HeaderMatcher, pseudo-headers included), url_path (the path without query or fragment),
destination_ip / source_ip / direct_remote_ip / remote_ip ([network, length]),
destination_port, destination_port_range ([start, end)), server_name (the SNI),
authenticated (None: any TLS connection, as in Envoy, certificate or not; else a string
matcher tried on each URI SAN, then each DNS SAN, then the subject ("" without a peer
certificate), as Envoy's AuthenticatedMatcher),
filter_state ([key, matcher]; Istio's io.istio.peer_principal: the peer certificate's
first spiffe:// URI SAN, whole, where the chain runs istio/proxy's network istio_authn that
writes it, or on an internal connection the one its connecting side shared; nothing else
sets it, so without either it matches nothing), metadata
(the stream's dynamic metadata, as Envoy's MetadataMatcher reads it: Istio 1.9/1.10's HTTP
istio_authn writes `source.principal` without "spiffe://" (istio/proxy
extensions/common/utils.cc GetPrincipal), which is how istiod wrote those policies'
principals; what no filter wrote is absent and never matches), never.
"""

from __future__ import annotations

import ipaddress

from .http.fault import compile_header_matchers
from .http.route_match import _string_matcher

PEER_PRINCIPAL_STATE = "io.istio.peer_principal"


class Facts:
    __slots__ = ("request", "local", "direct_remote", "remote", "tls", "metadata",
                 "peer_principal_state")

    def __init__(self, request, local, direct_remote, remote, tls, metadata=None,
                 peer_principal_state=None):
        self.request = request              # worker/codecs/message.py Request, or None
        self.local = local                  # (host, port) the client connected to
        self.direct_remote = direct_remote  # (host, port) of the socket's peer
        self.remote = remote                # (host, port) of the client (after XFF)
        self.tls = tls                      # worker/tls/transport.py Session, or None
        self.metadata = metadata            # the stream's dynamic metadata {filter: {..}}
        # Istio's io.istio.peer_principal filter state (internal_listener.peer_principal):
        # only a chain's istio_authn writes it, or a connecting side shares it
        self.peer_principal_state = peer_principal_state


class _NoHeaders:
    @staticmethod
    def get(name):
        return None


def _ip(address):
    try:
        ip = ipaddress.ip_address(address[0].split("%", 1)[0])
    except (ValueError, TypeError, IndexError):
        return None
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


def _in(network_spec, address) -> bool:
    if network_spec is None:
        return False
    ip = _ip(address) if address else None
    network = ipaddress.ip_network(network_spec[0])
    return ip is not None and ip.version == network.version and ip in network


def _sans(tls, cache_key="rbac.sans"):
    """(URI SANs, DNS SANs, subject) of the peer certificate, once per connection."""
    cached = tls.cache.get(cache_key)
    if cached is None:
        from cryptography import x509
        from ..tls.server import _subject_alt_names
        names = _subject_alt_names(tls.peer_der)
        subject = x509.load_der_x509_certificate(tls.peer_der).subject.rfc4514_string()
        cached = tls.cache[cache_key] = ([v for k, v in names if k == "URI"],
                                         [v for k, v in names if k == "DNS"], subject)
    return cached


def peer_principal(tls) -> str | None:
    """The peer certificate's first URI SAN (Envoy's principal, as ext_authz sends it)."""
    if tls is None or tls.peer_der is None:
        return None
    uris = _sans(tls)[0]
    return uris[0] if uris else None


def spiffe_peer_principal(tls) -> str | None:
    """Istio's io.istio.peer_principal: the peer certificate's first URI SAN that is a
    SPIFFE id ("spiffe://..."), None without one (istio/proxy's network istio_authn)."""
    if tls is None or tls.peer_der is None:
        return None
    return next((uri for uri in _sans(tls)[0] if uri.startswith("spiffe://")), None)


def _path_only(path: str) -> str:
    for mark in ("?", "#"):
        cut = path.find(mark)
        if cut >= 0:
            path = path[:cut]
    return path


def compile_matcher(spec):
    """A permission or principal dict -> f(facts) -> bool."""
    (key, value), = spec.items()
    if key == "any":
        return lambda facts: True
    if key == "never":
        return lambda facts: False
    if key in ("and", "or"):
        parts = [compile_matcher(s) for s in value]
        combine = all if key == "and" else any
        return lambda facts: combine(p(facts) for p in parts)
    if key == "not":
        inner = compile_matcher(value)
        return lambda facts: not inner(facts)
    if key == "header":
        test = compile_header_matchers([value])
        return lambda facts: test(facts.request if facts.request is not None else _NoHeaders)
    if key == "url_path":
        test = _string_matcher(value)
        return lambda facts: facts.request is not None and \
            bool(test(_path_only(facts.request.path)))
    if key == "destination_ip":
        return lambda facts: _in(value, facts.local)
    if key == "destination_port":
        return lambda facts: facts.local is not None and facts.local[1] == value
    if key == "destination_port_range":
        start, end = value
        return lambda facts: facts.local is not None and start <= facts.local[1] < end
    if key in ("source_ip", "direct_remote_ip"):
        return lambda facts: _in(value, facts.direct_remote)
    if key == "remote_ip":
        return lambda facts: _in(value, facts.remote)
    if key == "server_name":
        test = _string_matcher(value)
        return lambda facts: bool(test((facts.tls.server_name if facts.tls else None) or ""))
    if key == "authenticated":
        return _authenticated(value)
    if key == "filter_state":
        state_key, matcher = value
        test = _string_matcher(matcher)
        if state_key != PEER_PRINCIPAL_STATE:
            return lambda facts: False
        return lambda facts: _test_principal(test, facts)
    if key == "metadata":
        return _metadata(value)
    raise ValueError(f"unknown RBAC matcher {key!r}")


def _test_principal(test, facts) -> bool:
    principal = facts.peer_principal_state
    return principal is not None and bool(test(principal))


_ABSENT = object()      # no value at the path (Envoy's default Value, KIND_NOT_SET)


def metadata_test(value):
    """Envoy's MetadataMatcher (xds/rbac.py's) -> f(dynamic metadata or None) -> bool: the
    value matcher tried on the value at the filter's path (absent when a key is missing: no
    kind matches that, present_match included), `invert` flipping the result. RBAC's
    principals and permissions use it, and ext_authz's filter_enabled_metadata."""
    name, path, invert = value["filter"], value["path"], value["invert"]
    test = _value_matcher(value["value"]) if value["value"] else None
    if test is None:
        return lambda metadata: invert

    def match(metadata):
        found = (metadata or {}).get(name, _ABSENT)
        for key in path:
            found = found.get(key, _ABSENT) if isinstance(found, dict) else _ABSENT
        return test(found) != invert
    return match


def _metadata(value):
    test = metadata_test(value)
    return lambda facts: test(facts.metadata)


def _number(found) -> bool:
    return isinstance(found, (int, float)) and not isinstance(found, bool)


def _value_matcher(spec):
    """xds/rbac.py's value matcher -> f(value) -> bool, each kind true only on its own value
    type, as Envoy's ValueMatcher (source/common/common/matchers.cc): a string matcher never
    matches a list, nor a list matcher a string."""
    (kind, arg), = spec.items()
    if kind == "string":
        test = _string_matcher(arg)
        return lambda found: isinstance(found, str) and bool(test(found))
    if kind == "list":
        inner = _value_matcher(arg) if arg else (lambda found: False)
        return lambda found: isinstance(found, list) and any(inner(item) for item in found)
    if kind == "bool":
        return lambda found: isinstance(found, bool) and found == arg
    if kind == "present":
        return lambda found: arg and found is not _ABSENT
    if kind == "null":
        return lambda found: found is None
    if kind == "double":
        if len(arg) == 1:
            return lambda found: _number(found) and found == arg[0]
        start, end = arg
        return lambda found: _number(found) and start <= found < end
    if kind == "or":
        parts = [_value_matcher(m) for m in arg if m]
        return lambda found: any(p(found) for p in parts)
    raise ValueError(f"unknown metadata value matcher {kind!r}")


def _authenticated(matcher):
    if matcher is None:
        return lambda facts: facts.tls is not None
    test = _string_matcher(matcher)

    def match(facts):
        tls = facts.tls
        if tls is None:
            return False
        uris, dns, subject = _sans(tls) if tls.peer_der is not None else ((), (), "")
        return any(test(n) for n in uris) or any(test(n) for n in dns) or bool(test(subject))
    return match


class Engine:
    __slots__ = ("action", "policies")

    def __init__(self, rules: dict):
        self.action = rules["action"]
        self.policies = [(name, compile_matcher({"or": policy["permissions"]}),
                          compile_matcher({"or": policy["principals"]}))
                         for name, policy in rules["policies"]]

    def matched(self, facts) -> str | None:
        for name, permissions, principals in self.policies:
            if permissions(facts) and principals(facts):
                return name
        return None

    def decide(self, facts) -> tuple[bool, str | None]:
        name = self.matched(facts)
        if self.action == "ALLOW":
            return name is not None, name
        if self.action == "DENY":
            return name is None, name
        return True, name                   # LOG

"""Connecting to an internal listener (Envoy's `internal_listener`, xds/internal.py): a
cluster host at an `envoy_internal_address` is a listener of this same worker, not a socket
address.

A connect makes a Unix socket pair: one end is the upstream socket of the connecting side
(tcp_proxy, a terminated CONNECT), the other is accepted by the internal listener as if it
came from its accept queue, so every listener and chain feature (inspectors, filter chain
match, tcp_proxy with splice, the connection manager, TLS) runs on it unchanged. Envoy passes
buffers between the two in user space; here the kernel carries them, the price of keeping one
data path. The connection never leaves the worker.

What rides along (Envoy's internal_upstream passthrough metadata): the endpoint's
`envoy.filters.listener.original_dst` `local` (istiod's "ip:port" of the workload) becomes
the internal connection's original destination when the listener has Istio's
set_internal_dst_address filter, which is what that filter does; otherwise the destination is
what the connecting side knew (the address its own client dialled, or, where the listener has
set_internal_dst_address, a terminated CONNECT's authority). The peer is the connecting
side's client.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import weakref
from typing import NamedTuple

PREFIX = "internal:"

# loop -> the worker that runs on it, registered by its internal listeners: an HTTP pool
# (worker/proxy/http/pool.py) knows its loop, not its worker. Weak: a worker gone takes its
# entry with it, so a later loop that happens to get the same id() never finds a dead worker.
_WORKERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def register(worker) -> None:
    _WORKERS[id(worker.loop)] = worker


def is_internal(host) -> bool:
    return host.address.startswith(PREFIX)


# An internal connection's client descriptor -> what the connecting side shared with it
# (Shared below). Written (or cleared) at every internal accept, so a reused descriptor
# never shows an older connection's state; bounded by the descriptors.
_SHARED: dict = {}


class Shared(NamedTuple):
    """What a connecting side shares with the internal connection it makes (Envoy's filter
    state shared with the upstream connection, once: not passed further on)."""

    peer_workload: object = None    # a terminated CONNECT's baggage (Istio's connect_baggage),
    #                                 for the istio stats (tcp_stats.py, http_stats.py)
    peer_principal: str | None = None   # Istio's io.istio.peer_principal (istio_authn): the
    #                                     downstream's SPIFFE id, for RBAC (rbac_engine.py)
    #                                     and the stats (istio/http_stats.py mesh_side)
    local_principal: str | None = None  # io.istio.local_principal: the downstream TLS's own
    upstream: tuple | None = None   # (ip, port) for an ORIGINAL_DST cluster: a CONNECT's
    #                                 authority with connect_authority's `port`


class Authority(NamedTuple):
    """A terminated CONNECT's authority as Istio's connect_authority filter shares it
    (istio/proxy source/extensions/filters/listener/set_internal_dst_address): `ip`:`port` is
    the internal connection's local address, and `tunnel_port` (connect_authority's `port`,
    None when unset) the port an ORIGINAL_DST cluster behind it dials at that ip (Envoy's
    DestinationAddress filter state), not the local port."""

    ip: str
    port: int
    tunnel_port: int | None = None


def connect(worker, cluster, host, peer, destination=None, shared: Shared | None = None,
            authority: Authority | None = None) -> socket.socket:
    """The connecting side's end of a new connection to `host`'s internal listener; OSError
    (ECONNREFUSED) when this worker has no such internal listener, as a refused connect.
    `shared`: what the connecting side shares with it. `authority`: a terminated CONNECT's,
    restored only by a listener with set_internal_dst_address (the host's metadata first),
    as istio/proxy's filter does."""
    name, _endpoint_id, local = (cluster.internal_hosts.get(host.address) or
                                 (host.address[len(PREFIX):].split("/", 1)[0], "", None))
    listener = worker.listeners.get(name)
    if listener is None or not listener.spec.get("internal"):
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"no internal listener {name!r}")
    upstream = None
    restores = listener.spec.get("set_internal_dst")
    if local and restores and _passes_host_metadata(cluster):
        destination = ip_and_port(local) or destination
    elif authority is not None and restores:
        destination = authority[:2]
        if authority.tunnel_port:
            upstream = (authority.ip, authority.tunnel_port)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    theirs.setblocking(False)
    if upstream is not None:
        shared = (shared or Shared())._replace(upstream=upstream)
    if shared is not None:
        _SHARED[theirs.fileno()] = shared
    else:
        _SHARED.pop(theirs.fileno(), None)
    _accept(worker, listener, theirs, tuple(peer[:2]) if peer else ("127.0.0.1", 0),
            tuple(destination[:2]) if destination else ("0.0.0.0", 0))
    return ours


def connect_into(sock: socket.socket, loop, cluster, host, destination=None) -> None:
    """An HTTP pool's connect: `sock` (AF_UNIX, unconnected) becomes the connecting side's end
    of a new connection to `host`'s internal listener, in place (dup2), so the pool's socket
    object, timeouts and TLS carry on unchanged. A pool's connection serves many requests, so
    it has no one client: the peer is unknown, and the destination is what the host's
    metadata passes (set_internal_dst_address), else what the downstream connections of its
    pool share (`destination`: SharedStatePool below)."""
    worker = _WORKERS.get(id(loop))
    if worker is None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "no internal listener on this worker")
    ours = connect(worker, cluster, host, None, destination)
    try:
        os.dup2(ours.fileno(), sock.fileno())
    finally:
        ours.close()


def _shared(conn):
    listener = getattr(conn, "listener", None)
    if listener is None or not listener.spec.get("internal"):
        return None
    client = getattr(conn, "client", None)      # tcp_proxy's; the connection manager's is
    if client is None:                          # its transport's socket
        transport = getattr(conn, "transport", None)
        client = transport.get_extra_info("socket") if transport is not None else None
        if client is None:
            return None
    return _SHARED.get(client.fileno())


class SharedStatePool:
    """The HTTP pool of an internal host as the router sees it (HttpPools.get hands one out
    for an internal host): the request's downstream connection picks the real pool, one per
    destination its chain's set_filter_state shares with the upstream (Envoy keys its
    connection pools by the hash of the filter state shared with the upstream connection, so
    streams of connections with different destinations never share an upstream connection;
    Istio's waypoint: `direct-http`'s set_filter_state of the original_dst local_ip ahead of
    its connection manager, whose `encap` cluster reaches the connect_originate listener).
    Without such a filter the destination is None: the one pool there was before."""

    __slots__ = ("pools", "args", "inner")

    def __init__(self, pools, cluster, host, downstream_http2, request, alpn):
        self.pools = pools
        self.args = (cluster, host, downstream_http2, request, alpn)
        self.inner = None

    @property
    def http2(self) -> bool:
        return self.inner.http2 if self.inner is not None else False

    def request(self, waiter) -> None:
        if self.inner is None:
            self.inner = self.pools.get(*self.args, shared=(shared_destination(waiter),))
        self.inner.request(waiter)

    def cancel(self, waiter) -> None:
        if self.inner is not None:
            self.inner.cancel(waiter)

    def release(self, conn) -> None:
        self.inner.release(conn)

    def take_idle(self):
        return None         # the express lane: the full path picks the pool by the request


def shared_destination(waiter):
    """The destination a pool waiter's downstream connection shares with its upstream: a
    set_filter_state of its chain (xds/internal.py), literal or the connection's own; None
    without one (or for a waiter with no downstream connection: ext_authz's check)."""
    conn = getattr(getattr(getattr(waiter, "router", None), "stream", None), "conn", None)
    chain = getattr(conn, "chain", None)
    for entry in getattr(chain, "network_filters", None) or ():
        if entry.get("type") == "set_filter_state":
            own = conn.original
            shared = entry.get("original_dst") or (own[:2] if own else None)
            return tuple(shared) if shared else None
    return None


def peer_workload(conn):
    """The peer workload an internal connection's connecting side passed, or None."""
    shared = _shared(conn)
    return shared.peer_workload if shared is not None else None


def peer_principal(conn) -> str | None:
    """Istio's io.istio.peer_principal filter state of `conn` (RBAC's filter_state matcher
    reads it): what an internal connection's connecting side shared, else what `conn`'s own
    chain's istio_authn wrote of its TLS peer (istio/principal_state.py), else None."""
    shared = _shared(conn)
    if shared is not None and shared.peer_principal:
        return shared.peer_principal
    from .istio.principal_state import own_principals
    return own_principals(conn)[0]


def shared_principals(conn):
    """(peer, local) principals an internal connection's connecting side shared, either
    None; None when it shared nothing."""
    shared = _shared(conn)
    return (shared.peer_principal, shared.local_principal) if shared is not None else None


def original_dst_upstream(conn, original):
    """Where an ORIGINAL_DST cluster sends `conn` (whose destination is `original`): the
    authority's ip with connect_authority's `port` when the connecting side passed one
    (Envoy's ORIGINAL_DST load balancer prefers that filter state to the restored local
    address), else the destination itself."""
    shared = _shared(conn)
    return shared.upstream if shared is not None and shared.upstream else original


def stays_in_worker(listener, host) -> bool:
    """A connection accepted by an internal listener, or whose upstream is one: the other end
    of its socket pair is another connection of this worker, and an AF_UNIX descriptor is no
    socket a new worker could rebuild as its listener's, so it never moves (drains here)."""
    return bool(listener.spec.get("internal")) or (host is not None and is_internal(host))


def _passes_host_metadata(cluster) -> bool:
    passed = (cluster.internal_upstream or {}).get("metadata") or ()
    return any(kind == "host" and name == "envoy.filters.listener.original_dst"
               for kind, name in passed)


_PORT = re.compile(r"[0-9]{1,5}")


def ip_and_port(text: str | None):
    r"""(ip, port) of an "ip:port" / "[ipv6]:port" text, None for anything else, as Envoy's
    parseInternetAddressAndPortNoThrow refuses it: a terminated CONNECT's authority (what
    istio/proxy's set_internal_dst_address restores with it), an endpoint's metadata `local`,
    a set_filter_state literal (xds/internal.py). The port is 1-5 ASCII digits up to 65535
    (str.isdigit() took "\xb2" and "\u0663", and int() of the first raised: an HTTP/2
    CONNECT's authority dropped its connection), an IPv4 address only unbracketed and an
    IPv6 one only bracketed. A scoped IPv6 address (fe80::1%eth0) is refused too: Envoy's
    getaddrinfo would resolve the scope to one of its own interfaces, which names nothing on
    the far side of a tunnel. Port 0, which Envoy parses, is refused: no connection can go
    there."""
    host, sep, port = (text or "").rpartition(":")
    if not sep or not _PORT.fullmatch(port) or not 0 < int(port) <= 65535:
        return None
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if (ip.version == 6) != bracketed or "%" in host:
        return None
    return host, int(port)


def _accept(worker, listener, client, peer, original) -> None:
    """As worker.new_connection, with the original destination given, not read from a socket."""
    if listener.selects_chains:
        from ..inspection import Inspection
        worker.stats.counters[listener.stat_cx_total] += 1
        worker.stats.gauges[listener.stat_cx_active] += 1
        conn_id = worker.next_connection_id()
        worker.connections[conn_id] = Inspection(worker, listener, client, peer, original, conn_id)
        return
    worker.start_connection(listener, listener.default_chain, client, peer, original)


def chain_destination(chain, original):
    """The destination a tcp_proxy of `chain` passes to an internal listener: a literal
    set_filter_state gave (xds/internal.py), else the connection's own."""
    for entry in chain.network_filters:
        if entry.get("type") == "set_filter_state" and entry.get("original_dst"):
            return tuple(entry["original_dst"])
    return original

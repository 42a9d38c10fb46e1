"""A worker's side of one listener: accepting on the master's socket and starting connections.

Every worker accepts on the same listening socket (the master's, inherited at fork), so the
kernel's accept queue is shared: when a worker dies, the connections waiting in the queue are
accepted by the others instead of being reset with the dead worker's queue.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket

from .proxy.pipes import pipe_capacity_for

log = logging.getLogger("baton.listener")

ACCEPT_BATCH = 64            # accepts per wakeup, so one busy listener cannot starve the loop
EMFILE_BACKOFF = 0.1         # out of descriptors: stop accepting briefly rather than spin


class AcceptedSocket:
    """An accepted descriptor as uvloop's connect_accepted_socket needs it (family, type,
    fileno, close), for a listener whose connections all go straight to an HTTP transport.
    CPython's socket() asks getsockname of every descriptor it wraps (to check it), and the
    setblocking and TCP_NODELAY a socket would get here repeat what uvloop's TCP transport
    does itself (uv_tcp_open makes the descriptor non-blocking, TCPTransport.new sets
    TCP_NODELAY): three system calls per connection that Envoy does not make.

    Once uvloop's transport holds the descriptor (`attached`, set by the worker when the
    transport is made), libuv closes it; close() then only forgets it (uvloop calls it on its
    file object after libuv closed the descriptor). Before that, close() closes it."""

    __slots__ = ("family", "fd", "attached")
    type = socket.SOCK_STREAM

    def __init__(self, family: int, fd: int):
        self.family = family
        self.fd = fd
        self.attached = False

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0 and not self.attached:
            os.close(fd)


class Chain:
    """One filter chain: its match (worker/proxy/chains.py) and its network filter: a
    tcp_proxy config with the tcp.<stat_prefix>.* names its connections count into, or an
    http_connection_manager (`http_config`, worker/proxy/http/config.py). A chain with a TLS
    transport socket has its server side in `tls` (worker/tls/server.py)."""

    __slots__ = ("index", "spec", "buffer_limit", "match", "tcp_proxy", "http_config", "rpc",
                 "cx_total", "no_route", "rx_bytes", "tx_bytes", "idle_timeout", "rx_buffered",
                 "tx_buffered", "tls", "access_logs", "network_filters", "rbac_engines")

    def __init__(self, index: int, spec: dict, worker=None, buffer_limit: int = 1 << 20):
        self.index = index
        self.spec = spec
        self.buffer_limit = buffer_limit
        self.match = spec.get("match")
        self.tcp_proxy = spec.get("tcp_proxy")
        self.rpc = None
        self.http_config = None
        self.tls = None
        self.access_logs = None         # tcp_proxy's access_log (worker/connection_log.py)
        # The filters before tcp_proxy (Istio's stats, metadata exchange, RBAC), read per
        # connection by those modules; RBAC's engines are built on first use (rbac_network.py).
        self.network_filters = tuple(spec.get("network_filters") or ())
        self.rbac_engines = None
        if spec.get("tls") is not None:
            from .tls.server import TlsServer
            from .proxy import https, tls_proxy     # noqa: F401 - register "https1-idle", "tls-tcp"
            self.tls = TlsServer(spec["tls"])
        if spec.get("http") is not None:
            from .proxy.http.config import HttpConfig
            self.http_config = HttpConfig(spec["http"], worker, buffer_limit)
            self.cx_total = self.no_route = self.rx_bytes = self.tx_bytes = None
            self.idle_timeout = self.rx_buffered = self.tx_buffered = None
            return
        from .proxy.rpc.chain import rpc_chain
        self.rpc = rpc_chain(spec)          # Dubbo or SOFA Bolt (worker/proxy/rpc/), else None
        if self.rpc is not None:
            self.cx_total = self.no_route = self.rx_bytes = self.tx_bytes = None
            self.idle_timeout = self.rx_buffered = self.tx_buffered = None
            return
        if self.tcp_proxy is not None and self.tcp_proxy.get("access_log"):
            from .connection_log import build_access_logs
            self.access_logs = build_access_logs(self.tcp_proxy["access_log"], worker)
        tcp = f"tcp.{self.tcp_proxy['stat_prefix']}."
        self.cx_total = tcp + "downstream_cx_total"
        self.no_route = tcp + "downstream_cx_no_route"
        self.rx_bytes = tcp + "downstream_cx_rx_bytes_total"
        self.tx_bytes = tcp + "downstream_cx_tx_bytes_total"
        self.idle_timeout = tcp + "idle_timeout"
        self.rx_buffered = tcp + "downstream_cx_rx_bytes_buffered"
        self.tx_buffered = tcp + "downstream_cx_tx_bytes_buffered"


def _only_routes_differ(chain: Chain, spec: dict, buffer_limit: int) -> bool:
    """Whether `spec` is `chain` with another route_config (and nothing else changed)."""
    old = chain.spec
    if chain.http_config is None or not spec.get("http") or buffer_limit != chain.buffer_limit:
        return False
    if old.get("match") != spec.get("match") or old.get("tcp_proxy") != spec.get("tcp_proxy"):
        return False
    before, after = old["http"], spec["http"]
    return before.keys() == after.keys() and all(
        before[k] == after[k] for k in before if k != "route_config")


def _only_secrets_differ(chain: Chain, spec: dict, buffer_limit: int) -> bool:
    """Whether `spec` is `chain` with other TLS secrets (and nothing else changed)."""
    from .tls.server import only_secrets_differ
    old = chain.spec
    if buffer_limit != chain.buffer_limit or not only_secrets_differ(old.get("tls"), spec.get("tls")):
        return False
    return all(old.get(k) == spec.get(k) for k in (old.keys() | spec.keys()) - {"tls"})


class Listener:
    __slots__ = ("worker", "loop", "name", "sock", "fd", "family", "pipe_capacity",
                 "accepting", "held", "stat_cx_total", "stat_cx_active", "stat_no_chain",
                 "stat_global_cx_overflow", "stat_overload_reject", "ignore_global_limit", "spec",
                 "chains", "default_chain", "inspectors", "sniff_timeout", "sniff_continue",
                 "address", "port", "transparent", "original_dst", "use_original_dst",
                 "default_filter_chain", "access_logs", "inspectors_disabled", "selects_chains",
                 "local_address", "chain_matcher", "uvloop", "plain_http")

    def __init__(self, worker, spec: dict, fd: int | None):
        """`fd` None: a listener with bind_to_port false, which has no socket of its own and
        serves only connections another listener hands it by their original destination
        (use_original_dst; worker/main.py listener_for)."""
        self.worker = worker
        self.loop = worker.loop
        self.fd = fd
        self.family = socket.AF_INET6 if ":" in spec["address"] else socket.AF_INET
        self.sock = None
        # The (host, port) every accepted connection has as its local address when the socket
        # is bound to one address (not 0.0.0.0 or ::): read once here instead of by a
        # getsockname per connection; None: each connection asks its own socket. Not for a
        # transparent listener: TPROXY gives each connection its original destination as its
        # local address, whatever the listener is bound to.
        self.local_address = None
        if fd is not None:
            self.sock = socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
            self.sock.setblocking(False)
            bound = self.sock.getsockname()[:2]
            if not ipaddress.ip_address(bound[0].partition("%")[0]).is_unspecified \
                    and not spec.get("transparent", False):
                self.local_address = bound
        # Whether the loop is uvloop's, whose transports take an AcceptedSocket.
        self.uvloop = type(self.loop).__module__.startswith("uvloop")
        self.accepting = False
        # The overload manager's stop_accepting_connections: while held, the accept queue is
        # not read even though the listener is started (worker/overload_manager.py).
        self.held = worker.overload.holding
        self.update(spec)

    def update(self, spec: dict) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.address, self.port = spec["address"], spec["port"]
        self.transparent = spec.get("transparent", False)
        self.original_dst = spec.get("original_dst", False)
        self.use_original_dst = spec.get("use_original_dst", False)
        chain_specs = spec.get("filter_chains") or [{"match": None, "tcp_proxy": spec["tcp_proxy"]}]
        old_chains = getattr(self, "chains", ())
        limit = spec.get("buffer_limit", 1 << 20)
        chains = []
        for i, chain_spec in enumerate(chain_specs):
            old = old_chains[i] if i < len(old_chains) else None
            if old is not None and _only_routes_differ(old, chain_spec, limit):
                # An RDS update: the same chain, a new route table; no connection drains.
                old.spec = chain_spec
                old.http_config.set_routes(chain_spec["http"]["route_config"])
                chains.append(old)
            elif old is not None and _only_secrets_differ(old, chain_spec, limit):
                # A rotated secret (SDS, a watched file): new handshakes get the new
                # certificate at once; established connections keep their sessions.
                from .tls.server import TlsServer
                old.spec = chain_spec
                old.tls = TlsServer(chain_spec["tls"])
                chains.append(old)
            else:
                chains.append(Chain(i, chain_spec, self.worker, limit))
        self.chains = chains
        for chain in old_chains:
            if chain.http_config is not None and chain not in chains:
                chain.http_config.close()
        # default_filter_chain: what a connection gets when no filter_chain_match matches; it
        # is the last chain and never takes part in matching (worker/proxy/chains.py).
        self.default_filter_chain = next((c for c in self.chains if c.spec.get("default")), None)
        self.default_chain = next((c for c in self.chains if not c.match
                                   and not c.spec.get("default")), self.default_filter_chain)
        if spec.get("internal"):        # reached by this worker's HTTP pools too
            from .proxy.internal_listener import register
            register(self.worker)
        self.inspectors = spec.get("inspectors") or []
        # filter_disabled: {"tls" | "http": [[start, end)]} of destination ports to skip.
        self.inspectors_disabled = spec.get("inspectors_disabled") or None
        self.sniff_timeout = spec.get("sniff_timeout")        # None: no timeout
        self.sniff_continue = spec.get("sniff_continue", False)
        # Whether a connection must be inspected or matched before its chain is known (read
        # per accepted connection: decided here, once per update).
        self.selects_chains = bool(self.inspectors) or any(c.match for c in chains)
        # filter_chain_matcher: chains chosen by name (worker/proxy/filter_chain_matcher.py).
        self.chain_matcher = None
        if spec.get("chain_matcher"):
            from .proxy.filter_chain_matcher import ChainMatcher
            self.chain_matcher = ChainMatcher(spec["chain_matcher"])
            self.selects_chains = True
        # Every connection goes straight to a clear-text HTTP transport (no inspection, no
        # chain to choose, no original destination to read from the socket): accepted as an
        # AcceptedSocket, not a socket object (read per accepted connection).
        default = self.default_chain
        self.plain_http = self.uvloop and not self.selects_chains and not self.original_dst \
            and default is not None and default.http_config is not None and default.tls is None
        self.pipe_capacity = pipe_capacity_for(spec.get("buffer_limit", 1 << 20))
        scope = f"listener.{spec['stat_name']}."
        self.stat_cx_total = scope + "downstream_cx_total"
        self.stat_cx_active = scope + "downstream_cx_active"
        self.stat_no_chain = scope + "no_filter_chain_match"
        self.stat_global_cx_overflow = scope + "downstream_global_cx_overflow"
        self.stat_overload_reject = scope + "downstream_cx_overload_reject"
        self.ignore_global_limit = spec.get("ignore_global_conn_limit", False)
        self.access_logs = None
        if spec.get("access_log"):
            from .connection_log import build_access_logs
            self.access_logs = build_access_logs(spec["access_log"], self.worker)
        for chain in chains:
            if chain.tls is not None:
                chain.tls.declare_stats(scope, self.worker.stats)
                if chain.http_config is not None:
                    from .proxy.https import declare_stats
                    declare_stats(chain.http_config, self.worker.stats)

    def inspectors_for(self, port: int) -> list:
        """The inspectors that run for a connection to `port` (filter_disabled)."""
        disabled = self.inspectors_disabled
        if not disabled:
            return self.inspectors
        return [kind for kind in self.inspectors
                if not any(start <= port < end for start, end in disabled.get(kind, ()))]

    @property
    def bound(self) -> bool:
        return self.sock is not None

    def start(self) -> None:
        if self.sock is None:
            return
        if not self.accepting:
            self.accepting = True
            if not self.held:
                self.loop.add_reader(self.fd, self._on_acceptable)

    def stop(self) -> None:
        if self.sock is None:
            return
        if self.accepting:
            self.accepting = False
            if not self.held:
                self.loop.remove_reader(self.fd)

    def hold(self, on: bool) -> None:
        """Stop (or resume) reading the accept queue whatever start()/stop() said: new
        connections wait in the kernel's backlog, where other workers may take them."""
        if on == self.held or self.sock is None:
            return
        self.held = on
        if self.accepting and self.sock.fileno() >= 0:
            if on:
                self.loop.remove_reader(self.fd)
            else:
                self.loop.add_reader(self.fd, self._on_acceptable)

    def close(self) -> None:
        """Stop accepting and release this worker's copy of the socket (the master's and
        other workers' copies keep it open)."""
        self.stop()
        if self.sock is not None:
            self.sock.close()

    def _on_acceptable(self) -> None:
        accept = self.sock._accept          # raw (fd, addr): no socket object we'd discard
        family = self.family
        screen = self.worker.overload.screen_accept     # None unless the overload manager limits
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("listener %s: accept: %s; pausing %.1fs", self.name, exc, EMFILE_BACKOFF)
                    self.stop()
                    self.loop.call_later(EMFILE_BACKOFF, self._resume)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            if screen is not None and not screen(self):
                os.close(fd)                # as Envoy: accepted and closed at once
                continue
            if self.plain_http:
                self.worker.accept_plain_http(self, AcceptedSocket(family, fd), addr)
                continue
            client = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.worker.new_connection(self, client, addr)

    def _resume(self) -> None:
        if not self.worker.draining:
            self.start()

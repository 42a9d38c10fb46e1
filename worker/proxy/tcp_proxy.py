"""The L4 proxy: `envoy.filters.network.tcp_proxy` on explicitly owned descriptors.

A `TcpProxyConnection` owns two non-blocking sockets (client, upstream) and, once connected,
two `Pump`s, one per direction. A pump moves bytes socket -> kernel pipe -> socket with
splice(2): Python never sees the bytes, and the pipe (sized to the buffer limit) is the only
buffer, so backpressure is the pipe filling up: a full pipe stops reading its source until
its destination drains it.

Why no asyncio transports: they own their fd and hide their pending write bytes, and a later
issue moves live connections to another process. Here everything a connection holds — two
sockets, two pipes with their unsent bytes, and a few flags — is explicit and can be handed
over as descriptors.

Connection states: CONNECTING (client not read; upstream connect in flight, with a timeout and
up to max_connect_attempts tries on other hosts) -> OPEN (both pumps run) -> CLOSED. Half-close:
EOF from one side is forwarded as shutdown(SHUT_WR) on the other once its pipe is flushed; the
connection closes when both directions are done, or at once when either side fails.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
import struct
import time

from ...supervisor.handoff import ownership
from ..connection import Connection, Export, Lifecycle, Move, register
from . import rbac_network
from .internal_listener import original_dst_upstream
from .istio import tcp_stats as istio_tcp_stats
from .lb import Host

log = logging.getLogger("baton.tcp_proxy")

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_splice = os.splice
_monotonic = time.monotonic

CONNECTING, OPEN, CLOSED = Lifecycle.CONNECTING, Lifecycle.OPEN, Lifecycle.CLOSED


class Pump:
    """One direction of a connection: src socket -> pipe -> dst socket.

    The pipe is borrowed from the worker's pool only while bytes are in flight: an idle
    connection holds two sockets and nothing else (no pipe descriptors, no pipe pages), so ten
    thousand idle connections cost what they would in any proxy."""

    __slots__ = ("conn", "loop", "pool", "src", "dst", "pipe", "pipe_r", "pipe_w", "want",
                 "capacity", "pending", "reading", "writing", "eof", "done", "pipe_full",
                 "stats", "read_stats", "total", "gate")

    def __init__(self, conn, src: int, dst: int, capacity: int, read_stats):
        self.conn = conn
        self.loop = conn.loop
        self.pool = conn.worker.pipes
        self.src = src
        self.dst = dst
        self.want = capacity         # what the buffer limit asks for
        self.pipe = None
        self.pipe_r = self.pipe_w = -1
        self.capacity = capacity     # what the borrowed pipe really holds
        self.pending = 0             # bytes in the pipe, read from src, not yet written to dst
        self.reading = False
        self.writing = False
        self.eof = False             # src sent FIN
        self.done = False            # FIN forwarded to dst
        self.pipe_full = False
        self.stats = conn.stats.counters
        self.read_stats = read_stats
        self.total = 0               # bytes read from src (the access log's byte counts)
        self.gate = None             # f() -> bool asked once, before the first read (RBAC)

    def start(self) -> None:
        self._set_reading(True)

    def _set_reading(self, on: bool) -> None:
        if on != self.reading:
            self.reading = on
            if on:
                self.loop.add_reader(self.src, self.on_readable)
            else:
                self.loop.remove_reader(self.src)

    def _set_writing(self, on: bool) -> None:
        if on != self.writing:
            self.writing = on
            if on:
                self.loop.add_writer(self.dst, self.flush)
            else:
                self.loop.remove_writer(self.dst)

    def _borrow(self, at_least: int = 0) -> None:
        self.pipe = self.pool.get(max(self.want, at_least))
        self.pipe_r, self.pipe_w, self.capacity = self.pipe

    def _give_back(self) -> None:
        pipe, self.pipe = self.pipe, None
        self.pool.put(pipe, self.want, self.pending == 0)
        self.pipe_r = self.pipe_w = -1

    def on_readable(self) -> None:
        if self.gate is not None:   # the first bytes (or the FIN) are there: may they pass?
            gate, self.gate = self.gate, None
            if not gate():
                return
        if self.pipe is None:
            self._borrow()
        room = self.capacity - self.pending
        try:
            n = _splice(self.src, self.pipe_w, room, flags=SPLICE_FLAGS)
        except BlockingIOError:
            if self.pending:
                # Either the socket is empty or every pipe slot is taken; with bytes still in
                # the pipe assume the latter, so a readable socket cannot spin the loop.
                self.pipe_full = True
                self._set_reading(False)
            else:
                self._give_back()      # a spurious wakeup: nothing to hold the pipe for
            return
        except OSError as exc:
            self.conn.fail(f"read: {exc.strerror}")
            return
        conn = self.conn
        conn.last_active = _monotonic()
        if n == 0:
            self.eof = True
            self._set_reading(False)
        else:
            self.pending += n
            self.total += n
            stats = self.stats
            for name in self.read_stats:
                stats[name] += n
        self.flush()

    def flush(self) -> None:
        pending = self.pending
        while pending:
            try:
                n = _splice(self.pipe_r, self.dst, pending, flags=SPLICE_FLAGS)
            except BlockingIOError:
                break
            except OSError as exc:
                self.conn.fail(f"write: {exc.strerror}")
                return
            pending -= n
        self.pending = pending
        if self.conn.state is CLOSED:
            return
        if not pending and self.pipe is not None:
            self._give_back()
        self._set_writing(pending > 0)
        if self.eof:
            if not pending and not self.done:
                self.done = True
                self.conn.half_closed(self)
            return
        if self.pipe_full and pending > self.capacity // 2:
            return      # stay paused until the destination has drained half the pipe
        self.pipe_full = False
        self._set_reading(pending < self.capacity)

    def drain(self) -> bytes:
        """Take the bytes out of the pipe (the connection is moving to another process)."""
        chunks, left = [], self.pending
        while left:
            data = os.read(self.pipe_r, left)
            chunks.append(data)
            left -= len(data)
        self.pending = 0
        if self.pipe is not None:
            self._give_back()
        return b"".join(chunks)

    def restore(self, data: bytes, eof: bool, done: bool) -> None:
        """Put a moved direction's unsent bytes into a pipe, before anything is read."""
        if data:
            self._borrow(at_least=len(data))
            view = memoryview(data)
            while view:
                view = view[os.write(self.pipe_w, view):]
        self.pending = len(data)
        self.eof, self.done = eof, done

    def stop(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src)
            self.reading = False
        if self.writing:
            self.loop.remove_writer(self.dst)
            self.writing = False

    def release(self) -> None:
        """The connection is over (or moved): return the pipe, if one is held."""
        self.stop()
        if self.pipe is not None:
            self._give_back()


class TcpProxyConnection(Connection):
    kind = "tcp"
    __slots__ = ("worker", "loop", "listener", "config", "stats", "client", "upstream",
                 "cluster", "host", "tried", "attempts", "state", "pumps", "timer",
                 "last_active", "idle_timeout", "id", "peer", "moved", "early", "original",
                 "reset_client", "chain", "initial", "started", "__weakref__")

    def __new__(cls, worker, listener, client, peer, conn_id, chain=None):
        """A connection whose chain names a cluster that originates TLS (a transport_socket
        or transport_socket_matches) is a TlsProxyConnection (tls_proxy.py): its bytes go
        through Baton's record layer, not splice. Chosen here, per connection, so that every
        place that makes a tcp_proxy connection (accept, a moved "tcp-connecting" record)
        gets the right one while clusters come and go over CDS."""
        if cls is TcpProxyConnection and ((chain or listener.default_chain).tcp_proxy or {}
                                          ).get("tunneling"):
            from .tunneling import TunnelingConnection      # tunneling_config: HTTP CONNECT
            return object.__new__(TunnelingConnection)
        if cls is TcpProxyConnection and _originates_tls(worker, chain or listener.default_chain):
            from .tls_proxy import TlsProxyConnection
            cls = TlsProxyConnection
        return object.__new__(cls)

    def __init__(self, worker, listener, client: socket.socket, peer, conn_id: int, chain=None):
        self.worker = worker
        self.loop = worker.loop
        self.listener = listener
        self.chain = chain or listener.default_chain
        self.config = self.chain.tcp_proxy
        self.stats = worker.stats
        self.client = client
        self.peer = peer
        self.id = conn_id
        self.upstream: socket.socket | None = None
        self.cluster = None
        self.host = None
        self.tried: list = []
        self.attempts = 0
        self.state = CONNECTING
        self.pumps: tuple[Pump, Pump] | None = None
        self.timer = None
        self.last_active = _monotonic()
        self.idle_timeout = self.config["idle_timeout"]
        self.moved = None
        self.early = None       # forwarding messages that beat the adoption reply (write migration)
        self.original = None    # (address, port) the client dialled, when intercepted
        self.reset_client = False
        self.initial = None     # bytes the inspectors already read: the first to go upstream
        self.started = self.loop.time()     # for the access log (since adoption, if moved)

    # -- connecting ----------------------------------------------------------------------

    def start(self, counted: bool = False) -> None:
        """`counted`: the listener already counted this connection (it was inspected first)."""
        counters = self.stats.counters
        if not counted:
            counters[self.listener.stat_cx_total] += 1
            self.stats.gauges[self.listener.stat_cx_active] += 1
        counters[self.chain.cx_total] += 1
        self.cluster = self._choose_cluster()
        if self.cluster is None:
            counters[self.chain.no_route] += 1
            self.close()
            return
        if self.cluster.active >= self.cluster.max_connections:
            counters[self.cluster.stat["upstream_cx_overflow"]] += 1
            self.close()
            return
        # A tunneling connection's RBAC decides here, after the cluster is chosen (so a denied
        # connection's log names it); the others' on the client's first bytes (_established).
        if self.chain.network_filters and self.kind not in rbac_network.ON_FIRST_BYTES and \
                not rbac_network.allows(self):
            self.close()                    # Istio's AuthorizationPolicy denied it
            return
        self._connect()

    def _choose_cluster(self):
        clusters = self.config["clusters"]
        if len(clusters) == 1:
            name = clusters[0][0]
        else:
            total = sum(w for _, w in clusters)
            point = random.random() * total
            for name, weight in clusters:
                point -= weight
                if point < 0:
                    break
        return self.worker.clusters.get(name)

    def _pick_host(self):
        cluster = self.cluster
        if cluster.type != "ORIGINAL_DST":
            return cluster.pick(self.tried) or (cluster.pick() if self.tried else None)
        # The PassthroughCluster: where the client meant to go (for an internal connection,
        # what its connecting side named: internal_listener.original_dst_upstream). Never
        # back into ourselves.
        original = original_dst_upstream(self, self.original)
        if original is None or self.worker.is_own_listener(original):
            log.debug("connection %d: no usable original destination (%s)", self.id, original)
            return None
        return Host(*original)

    def _connect(self) -> None:
        cluster = self.cluster
        host = self._pick_host()
        if host is None:
            self.stats.counters[cluster.stat["upstream_cx_none_healthy"]] += 1
            self.reset_client = cluster.type == "ORIGINAL_DST"
            self.close()
            return
        self.host = host
        self.attempts += 1
        if host.address.startswith("internal:"):
            self._connect_internal()                # an internal listener of this worker
            return
        family = socket.AF_INET6 if ":" in host.address else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            log.error("cannot create upstream socket: %s", exc)
            self.close()
            return
        self.upstream = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.worker.upstream_mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.worker.upstream_mark)
        counters = self.stats.counters
        counters[cluster.stat["upstream_cx_total"]] += 1
        self.stats.gauges[cluster.stat["upstream_cx_active"]] += 1
        cluster.active += 1
        host.active += 1
        host.total += 1
        err = cluster.bind_source(sock) or sock.connect_ex((host.address, host.port))
        if err not in (0, errno.EINPROGRESS):
            self._connect_failed(os.strerror(err))
            return
        self.loop.add_writer(sock.fileno(), self._on_connect_writable)
        self.timer = self.loop.call_later(cluster.connect_timeout, self._on_connect_timeout)

    def _connect_internal(self) -> None:
        from .internal_listener import chain_destination, connect
        cluster, host = self.cluster, self.host
        self.stats.counters[cluster.stat["upstream_cx_total"]] += 1
        host.total += 1
        try:
            upstream = connect(self.worker, cluster, host, self.peer,
                               chain_destination(self.chain, self.original))
        except OSError as exc:          # no such listener, EMFILE...: a refused connect
            self._connect_failed(exc.strerror or str(exc))
            return
        # Active only once there is a socket: _release_upstream undoes exactly this.
        self.upstream = upstream
        self.stats.gauges[cluster.stat["upstream_cx_active"]] += 1
        cluster.active += 1
        host.active += 1
        self.timer = self.loop.call_later(cluster.connect_timeout, self._on_connect_timeout)
        # Not inside the internal listener's accept; meanwhile the client may have gone, or
        # the connection been exported (its upstream released): then nothing is connected.
        self.loop.call_soon(lambda: self.state is CONNECTING and self.upstream is upstream
                            and self._connected())

    def _on_connect_writable(self) -> None:
        sock = self.upstream
        self.loop.remove_writer(sock.fileno())
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(os.strerror(err))
            return
        self._connected()

    def _connected(self) -> None:
        """The TCP connect succeeded (TLS origination adds its handshake: tls_proxy.py)."""
        self.timer.cancel()
        self._established()

    def _on_connect_timeout(self) -> None:
        self.timer = None
        self.stats.counters[self.cluster.stat["upstream_cx_connect_timeout"]] += 1
        self.loop.remove_writer(self.upstream.fileno())
        self._connect_failed("connect timeout")

    def _connect_failed(self, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        cluster, host = self.cluster, self.host
        self.stats.counters[cluster.stat["upstream_cx_connect_fail"]] += 1
        host.connect_fail += 1
        self._release_upstream()
        self.tried.append(host)
        log.debug("connect to %s failed: %s", host.stat_id, reason)
        if self.attempts < self.config["max_connect_attempts"]:
            self._connect()
        else:
            if self.config["max_connect_attempts"] > 1:
                self.stats.counters[cluster.stat["upstream_cx_connect_attempts_exceeded"]] += 1
            # Transparent passthrough: a destination that refuses is reflected to the client
            # as a reset, as if Baton were not there (never a silent close).
            self.reset_client = cluster.type == "ORIGINAL_DST"
            self.close()

    def _release_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
            self.cluster.active -= 1
            self.host.active -= 1
            self.stats.gauges[self.cluster.stat["upstream_cx_active"]] -= 1

    # -- open ----------------------------------------------------------------------------

    def _pipe_capacities(self) -> tuple[int, int]:
        # Bytes waiting for the upstream are bounded by the cluster's buffer limit, bytes
        # waiting for the client by the listener's: Envoy's two per_connection_buffer_limit_bytes.
        return self.cluster.pipe_capacity, self.listener.pipe_capacity

    def _established(self, moved=None) -> None:
        self.state = OPEN
        c, u = self.client.fileno(), self.upstream.fileno()
        to_upstream, to_client = self._pipe_capacities()
        upstream_bound, client_bound = self._byte_stats()
        if self.chain.network_filters:     # Istio's TCP metrics (a moved one
            received, sent = istio_tcp_stats.opened(self, moved is not None)  # counted already)
            upstream_bound, client_bound = upstream_bound + received, client_bound + sent
        self.pumps = (Pump(self, c, u, to_upstream, upstream_bound),
                      Pump(self, u, c, to_client, client_bound))
        if self.chain.network_filters and rbac_network.gated(self):
            # Envoy's network RBAC decides on the client's first bytes, the upstream connected
            # by then (what it sends first reaches the client): bytes an inspector read, or
            # the client's first read. A moved connection with client bytes in flight was
            # decided before it moved; one without is asked again (it may not have been).
            first = self.initial if moved is None else (moved[0]["data"], moved[0]["eof"])
            if first is None or not (first[0] or first[1]):
                self.pumps[0].gate = self.first_bytes_allowed
            elif moved is None and not self.first_bytes_allowed():
                return
        if moved is None and self.initial is not None:
            data, eof = self.initial
            moved = ({"data": data, "eof": eof, "done": False}, {"data": b"", "eof": False, "done": False})
            self.initial = None
        if moved is not None:
            for pump, direction in zip(self.pumps, moved):
                pump.restore(direction["data"], direction["eof"], direction["done"])
        self._run_pumps()

    def first_bytes_allowed(self) -> bool:
        """Network RBAC on the client's first bytes: allowed, or closed (rbac_network.py)."""
        if rbac_network.allows(self):
            return True
        self.close()                        # Istio's AuthorizationPolicy denied it
        return False

    def _byte_stats(self) -> tuple[tuple, tuple]:
        """The counters of each direction's bytes: (client -> upstream, upstream -> client)."""
        cluster, chain = self.cluster, self.chain
        return ((chain.rx_bytes, cluster.stat["upstream_cx_tx_bytes_total"]),
                (chain.tx_bytes, cluster.stat["upstream_cx_rx_bytes_total"]))

    def _run_pumps(self) -> None:
        for pump in self.pumps:
            if not pump.eof:
                pump.start()
        for pump in self.pumps:
            if self.state is OPEN and (pump.pending or (pump.eof and not pump.done)):
                pump.flush()
        if self.idle_timeout and self.state is OPEN:
            self.timer = self.loop.call_later(self.idle_timeout, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        # One lazy timer per connection: activity only stamps last_active; the timer re-arms
        # for the remainder instead of being reset on every read.
        idle_for = _monotonic() - self.last_active
        if idle_for >= self.idle_timeout:
            self.timer = None
            self.stats.counters[self.chain.idle_timeout] += 1
            self.close()
        else:
            self.timer = self.loop.call_later(self.idle_timeout - idle_for, self._on_idle_timer)

    def half_closed(self, pump: Pump) -> None:
        """`pump`'s source sent FIN and everything before it reached the destination."""
        try:
            socket_for = self.upstream if pump.dst == self.upstream.fileno() else self.client
            socket_for.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if all(p.done for p in self.pumps):
            self.close()

    def fail(self, reason: str) -> None:
        log.debug("connection %d: %s", self.id, reason)
        self.close()

    def close(self) -> None:
        if self.state is CLOSED:
            return
        self.state = CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.chain.access_logs or self.listener.access_logs:
            from ..connection_log import log_tcp_proxy
            log_tcp_proxy(self)
        if self.pumps is not None:
            if self.chain.network_filters:
                istio_tcp_stats.closed(self)
            for pump in self.pumps:
                pump.release()
            self.pumps = None
        if self.upstream is not None:
            self.loop.remove_writer(self.upstream.fileno())
            self.stats.counters[self.cluster.stat["upstream_cx_destroy"]] += 1
            self._release_upstream()
        if self.reset_client:
            try:
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.client.close()
        self.stats.gauges[self.listener.stat_cx_active] -= 1
        self.worker.connection_closed(self)

    # -- the Connection interface: moving to another worker (worker/connection.py) ----------

    def readiness(self) -> Move:
        if self.stays_in_worker():
            return Move.NEVER
        return Move.NOW if self.state is OPEN or self.state is CONNECTING else Move.NEVER

    def stays_in_worker(self) -> bool:
        """Its client or its upstream is an internal listener's socket pair (internal_listener.py)."""
        from .internal_listener import stays_in_worker
        return stays_in_worker(self.listener, self.host)

    def buffered(self) -> tuple[int, int]:
        if self.pumps is None:
            return 0, 0
        upstream_bound, client_bound = self.pumps
        return upstream_bound.pending, client_bound.pending

    def on_forwarded(self, msg: dict) -> bool:
        """Forwarding messages that beat the adoption reply (write migration) wait for it."""
        if self.early is None:
            return False
        self.early.append(msg)
        return True

    def export(self, client_only: bool = False) -> Export:
        """Pause this connection and describe it for another worker.

        It stays ours until `migrated()` (another worker adopted it) or `resume()` (it did
        not). An open connection moves with both sockets and the unsent bytes of each
        direction (record "tcp"), or with `client_only` with its client socket alone, the
        upstream staying here (record "tcp-split"); one still connecting moves with its client
        socket only, since nothing has been read from the client yet: the adopter connects
        afresh (record "tcp-connecting")."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        fields = {"id": self.id, "listener": self.listener.name,
                  "peer": list(self.peer) if self.peer else None,
                  "original": list(self.original) if self.original else None,
                  "chain": self.chain.index}
        if self.state is OPEN:
            moved = []
            for pump in self.pumps:
                pump.stop()
                moved.append({"data": pump.drain(), "eof": pump.eof, "done": pump.done})
            self.moved = moved
            if client_only:
                # Write migration (worker/forwarding.py): only the client moves; what the
                # upstream sends later is forwarded to the adopter.
                self.early = []
                fields.update(up={"eof": moved[0]["eof"]}, down=moved[1],
                              limit=self.cluster.buffer_limit)
                return Export("tcp-split", fields, [self.client.fileno()])
            fields.update(cluster=self.cluster.name, host=[self.host.address, self.host.port],
                          up=moved[0], down=moved[1])
            return Export("tcp", fields, [self.client.fileno(), self.upstream.fileno()])
        self.loop.remove_writer(self.upstream.fileno())
        self._release_upstream()
        self.attempts -= 1           # an interrupted attempt is not a failed one
        if self.initial is not None:  # bytes an inspector already read: they must move too
            fields["initial"] = {"data": self.initial[0], "eof": self.initial[1]}
        return Export("tcp-connecting", fields, [self.client.fileno()])

    def resume(self) -> None:
        """The move failed: carry on here, exactly where export() paused."""
        self.early = None
        if self.state is OPEN:
            for pump, direction in zip(self.pumps, self.moved):
                pump.restore(direction["data"], direction["eof"], direction["done"])
            self.moved = None
            self._run_pumps()
        elif self.state is CONNECTING:
            self._connect()

    def migrated(self, channel, new_id: int) -> None:
        """Another worker adopted this connection: let go of our descriptors without
        shutting anything down (the adopter holds the same sockets). A split one keeps its
        upstream here, forwarded over `channel` to the adopter's connection `new_id`."""
        if self.early is not None:
            self._forward_upstream(channel, new_id)
            return
        pumps, self.pumps = self.pumps, None
        self.moved = None
        self.state = CLOSED
        if pumps is not None:
            for pump in pumps:
                pump.release()
        if self.upstream is not None:
            self._release_upstream()
        self.client.close()
        self.stats.gauges[self.listener.stat_cx_active] -= 1
        self.worker.connection_closed(self)

    def keeps_exchange_here(self) -> bool:
        """Exported client-only (tcp-split): its upstream half stays here, paused as export
        left it, and can wait for a late answer to learn the new id it forwards to."""
        return self.early is not None and self.state is OPEN

    def _forward_upstream(self, channel, peer_id: int):
        """The adopter took our client (write migration): keep serving the upstream half here,
        forwarding over `channel`. The ForwardedSide replaces this connection."""
        from ..forwarding import ForwardedSide
        up, down = self.moved
        cluster, host = self.cluster, self.host

        def upstream_done(side):
            cluster.active -= 1
            host.active -= 1
            self.stats.gauges[cluster.stat["upstream_cx_active"]] -= 1
        side = ForwardedSide(self.worker, self.upstream, channel, self.id, peer_id,
                             cluster.buffer_limit, initial=up["data"], read_eof=down["eof"],
                             peer_eof=up["eof"], shut=up["done"], on_close=upstream_done)
        early, self.early, self.moved = self.early or [], None, None
        self.upstream = None          # the forwarder owns it now
        self.pumps = None
        self.state = CLOSED
        self.client.close()           # the adopter holds it: no shutdown
        self.stats.gauges[self.listener.stat_cx_active] -= 1
        self.worker.connections[self.id] = side
        side.start()
        for msg in early:
            side.on_message(msg)

    @classmethod
    def adopt(cls, worker, listener, fields: dict, fds: list[int], conn_id: int, channel=None):
        """Records "tcp" and "tcp-connecting" another worker exported: continue here."""
        index = fields.get("chain") or 0
        chain = listener.chains[index] if index < len(listener.chains) else None
        return cls.adopt_sockets(worker, listener, fields, fds, conn_id, chain=chain)

    @classmethod
    def adopt_sockets(cls, worker, listener, fields: dict, fds: list[int], conn_id: int, **how):
        """The connection `fields` and `fds` describe, made as `cls(..., **how)`."""
        # The family is known (the listener's): passing it saves socket() three getsockopt calls.
        client = ownership.socket_from(fds, 0, listener.family)
        peer = tuple(fields["peer"]) if fields.get("peer") else None
        conn = cls(worker, listener, client, peer, conn_id, **how)
        conn.original = tuple(fields["original"]) if fields.get("original") else None
        worker.stats.gauges[listener.stat_cx_active] += 1
        if len(fds) == 1:            # tcp-connecting
            if fields.get("initial"):
                conn.initial = (fields["initial"]["data"], fields["initial"]["eof"])
            conn.cluster = conn._choose_cluster()
            if conn.cluster is None:
                conn.close()
            else:
                conn._connect()
            return conn
        cluster = worker.clusters.get(fields["cluster"])
        address, port = fields["host"]
        host = next((h for h in cluster.hosts if h.address == address and h.port == port), None)
        if host is None:       # the endpoint left the config: the connection still lives
            host = Host(address, port)
        conn.cluster, conn.host = cluster, host
        conn.upstream = ownership.socket_from(
            fds, 1, socket.AF_INET6 if ":" in address else socket.AF_INET)
        cluster.active += 1
        host.active += 1
        worker.stats.gauges[cluster.stat["upstream_cx_active"]] += 1
        conn._established(moved=(fields["up"], fields["down"]))
        return conn


def _originates_tls(worker, chain) -> bool:
    if chain is None or chain.tcp_proxy is None:
        return False
    clusters = worker.clusters
    for name, _weight in chain.tcp_proxy["clusters"]:
        cluster = clusters.get(name)
        if cluster is not None and cluster.originates_tls:
            return True
    return False


def _cluster_missing(worker, listener, fields: dict) -> str | None:
    if worker.clusters.get(fields["cluster"]) is None:
        return f"no cluster {fields['cluster']!r} here"
    return None


def _cannot_continue(worker, listener, fields: dict) -> str | None:
    """An open "tcp" record goes on splicing its two sockets; a chain that now tunnels
    (tunneling_config) would make it a TunnelingConnection, whose upstream must answer a
    CONNECT first: that cannot be sent into a stream already open. It stays and drains."""
    index = fields.get("chain") or 0
    chain = listener.chains[index] if index < len(listener.chains) else listener.default_chain
    if chain is not None and (chain.tcp_proxy or {}).get("tunneling"):
        return "its filter chain tunnels here (tunneling_config)"
    return _cluster_missing(worker, listener, fields)


register("tcp", TcpProxyConnection.adopt, _cannot_continue)
register("tcp-connecting", TcpProxyConnection.adopt)

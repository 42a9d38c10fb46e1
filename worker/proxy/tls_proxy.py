"""tcp_proxy with TLS on either side: a `TcpProxyConnection` whose client speaks TLS (TLS
termination), whose upstream does (TLS origination: the cluster's transport_socket or the
transport_socket_matches entry of the host), or both.

OpenSSL does each handshake (worker/tls/handover.py, over MemoryBIOs, driven here with
add_reader/add_writer on the worker's loop: the server side through worker/tls/accept.py,
the client side through worker/tls/client.py); Baton's record layer (worker/tls/layer.py)
protects every record after it, on each side that speaks TLS. So once the handshakes are
done the whole connection is plain values — two sockets, each layer's state, and the bytes
not yet written each way — and it moves through `baton reload` like an L4 connection
(record "tls-tcp" when only the client speaks TLS, "tls-origin-tcp" as soon as the upstream
does, or when the cluster may use TLS for some host and this one is plain).

Why not splice with a kernel-less TLS upstream, or OpenSSL's own session upstream: an
OpenSSL session cannot leave the process, so a tcp_proxy session with a TLS upstream would
have to drain at every reload, which is what Baton exists to avoid. The price is that the
bytes go through Python (the record layer's AEAD calls are C, the copies are not); a plain
connection on a cluster that never uses TLS keeps splice (TcpProxyConnection picks this
class only when a cluster of the chain originates TLS).

Lifecycle: CONNECTING while the client's handshake runs (bounded by the chain's
transport_socket_connect_timeout) and then while the upstream connect — TCP, then the
upstream handshake, both bounded by the cluster's connect_timeout as in Envoy — is in flight
(the tcp_proxy's own logic: retries, circuit breaking; a refused upstream handshake is a
failed connect, counted in upstream_cx_connect_fail and the cluster's ssl.*), OPEN once all
are done, CLOSED. Unlike Envoy, the upstream is dialled only after the client's handshake,
so a client that fails it never reaches the upstream. The client's handshake is short: it
never moves (readiness NEVER); a reload that finds the upstream connect after it in flight
waits for it (WHEN_IDLE) and moves the connection as soon as it is open; an open connection
moves at once.

Data path, per direction, one bytearray of bytes for the destination's socket (records
where that side speaks TLS, plaintext where it does not) bounded by Envoy's buffer limits
(the cluster's for bytes going upstream, the listener's for bytes going to the client, as
tcp_proxy has them): a direction whose buffer is full stops reading its source until the
destination took enough. Half-close maps both ways: the end of a side's stream (its
close_notify, or a bare FIN) becomes, once everything before it was written, a close_notify
(where the other side speaks TLS) and a FIN to the other side. A bad record gets the alert
the layer queued (the one OpenSSL would send) and closes the connection.
"""

from __future__ import annotations

import logging
import socket
import time

from ..connection import Export, Lifecycle, Move, register
from ..tls.accept import HandshakeRefused, ServerAccept
from ..tls.client import EXCHANGE_ALPN, ClientConnect
from ..tls.records import TLSAlert
from ..tls.state import StateError, export_state, import_state
from . import rbac_network
from .istio import tls_session as istio_tls_session
from .tcp_proxy import TcpProxyConnection, _cluster_missing

log = logging.getLogger("baton.tls_proxy")

CONNECTING, OPEN, CLOSED = Lifecycle.CONNECTING, Lifecycle.OPEN, Lifecycle.CLOSED
RECV_SIZE = 65536
_monotonic = time.monotonic


class TlsProxyConnection(TcpProxyConnection):
    kind = "tls"
    __slots__ = ("tls", "handshake", "layer", "to_upstream", "to_client", "client_fd",
                 "upstream_fd", "io", "client_eof", "upstream_eof", "up_done", "down_done",
                 "up_limit", "down_limit", "paused", "on_idle", "held",
                 "up_connect", "up_layer", "up_client", "up_handshake_out", "istio",
                 "rbac_pending")

    def __init__(self, worker, listener, client: socket.socket, peer, conn_id: int, chain=None):
        super().__init__(worker, listener, client, peer, conn_id, chain)
        self.tls = self.chain.tls           # the client side's TlsServer, None: plain client
        self.handshake = None
        self.layer = None                   # the client side's record layer
        self.up_client = None               # the upstream's TlsClient (None: plain upstream)
        self.up_connect = None              # its handshake while it runs (ClientConnect)
        self.up_layer = None                # the upstream side's record layer
        self.up_handshake_out = bytearray() # upstream handshake bytes not yet sent
        # Bytes for each socket: records where that side speaks TLS, plaintext where not;
        # while the upstream connects, to_upstream holds the client's plaintext (sealed
        # once the upstream's layer exists).
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.client_fd = client.fileno()
        self.upstream_fd = -1
        self.io: set = set()                # registered (fd, "r" | "w")
        self.client_eof = self.upstream_eof = False   # each side ended its stream
        self.up_done = self.down_done = False          # ...and that end was passed on
        self.up_limit = self.down_limit = 0
        self.paused = False                 # exported, waiting for migrated() or resume()
        self.on_idle = None                 # a reload waits for the upstream connect to end
        self.held = False                   # ...and it ended: open, not started, about to move
        self.istio = None                   # Istio's exchange and stats (istio/tls_session.py)
        self.rbac_pending = False           # network RBAC waits for the first plaintext

    # -- the handshake ----------------------------------------------------------------------

    def start(self, counted: bool = False) -> None:
        if self.tls is None:                # a plain client: tcp_proxy's start, then connect
            super().start(counted)
            return
        counters = self.stats.counters
        if not counted:
            counters[self.listener.stat_cx_total] += 1
            self.stats.gauges[self.listener.stat_cx_active] += 1
        # Envoy's tcp_proxy counts the connection when it is accepted, handshake or not.
        counters[self.chain.cx_total] += 1
        self.handshake = ServerAccept(self.tls)
        self.timer = self.loop.call_later(self.tls.handshake_timeout, self._on_handshake_timeout)
        self._watch(self.client_fd, "r", self._on_handshake_readable)
        if self.initial is not None:        # the ClientHello the tls_inspector already read
            data, eof = self.initial
            self.initial = None
            self._handshake_input(data, eof)

    def _on_handshake_readable(self) -> None:
        try:
            data = self.client.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._handshake_failed("connection_error", f"read: {exc.strerror}")
            return
        self._handshake_input(data, not data)

    def _handshake_input(self, data: bytes, eof: bool) -> None:
        try:
            out = self.handshake.receive(data, eof)
        except HandshakeRefused as exc:
            self.to_client += exc.data          # OpenSSL's alert, or ours, if there is one
            self._flush_client()
            self._handshake_failed(exc.counter, str(exc))
            return
        if out:
            self.to_client += out
            self._flush_client()
            if self.state is CLOSED:
                return
        if self.handshake.layer is not None:
            self._handshake_done()

    def _on_handshake_timeout(self) -> None:
        self.timer = None
        self._handshake_failed("connection_error", "handshake timeout")

    def _handshake_failed(self, counter: str, reason: str) -> None:
        log.debug("connection %d: TLS handshake failed: %s", self.id, reason)
        self.tls.count(counter)
        self.close()

    def _handshake_done(self) -> None:
        self.layer, self.handshake = self.handshake.layer, None
        self._unwatch(self.client_fd, "r")
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            self.to_upstream += self.layer.receive_data(b"")   # records behind the Finished
        except TLSAlert as exc:
            self._alert(exc)
            return
        self.to_client += self.layer.data_to_send()
        self.client_eof = self.layer.peer_closed
        # tcp_proxy's start counts cx_total again: it was counted at accept (in the same turn
        # of the loop, so no stats snapshot sees the difference).
        self.stats.counters[self.chain.cx_total] -= 1
        super().start(counted=True)         # tcp_proxy: choose a cluster, connect, retry

    # -- the upstream's handshake (TLS origination) ------------------------------------------

    def _connected(self) -> None:
        self.up_client = client = self.cluster.transport_for(self.host)
        if client is None:
            super()._connected()
            return
        # The connect timer runs on: Envoy's connect_timeout covers the handshake too.
        self.upstream_fd = self.upstream.fileno()
        self.up_connect = ClientConnect(client, client.sni, EXCHANGE_ALPN)
        try:
            out = self.up_connect.start()
        except HandshakeRefused as exc:         # its secrets are not there yet
            self._upstream_refused(exc.counter, str(exc))
            return
        self._upstream_handshake_output(out)
        if self.up_connect is not None:
            self._watch(self.upstream_fd, "r", self._on_upstream_handshake_readable)

    def _on_upstream_handshake_readable(self) -> None:
        try:
            data = self.upstream.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._upstream_refused("connection_error", f"upstream read: {exc.strerror}")
            return
        try:
            out = self.up_connect.receive(data, not data)
        except HandshakeRefused as exc:
            self._send_best_effort(self.upstream, exc.data)   # OpenSSL's alert, or ours
            self._upstream_refused(exc.counter, str(exc))
            return
        self._upstream_handshake_output(out)
        if self.up_connect is not None and self.up_connect.layer is not None:
            self._upstream_handshake_done()

    def _upstream_handshake_output(self, out: bytes) -> None:
        buf = self.up_handshake_out
        buf += out
        if buf and not self._send(self.upstream, buf, "upstream"):
            return
        self._watch_if(self.upstream_fd, bool(buf),
                       lambda: self._upstream_handshake_output(b""), "w")

    def _upstream_refused(self, counter: str, reason: str) -> None:
        self.up_client.count(counter)
        log.debug("connection %d: upstream TLS handshake with %s failed: %s", self.id,
                  self.host.stat_id, reason)
        self._connect_failed(f"TLS: {reason}")

    def _upstream_handshake_done(self) -> None:
        self.up_layer, self.up_connect = self.up_connect.layer, None
        self._unwatch(self.upstream_fd, "r")
        self._unwatch(self.upstream_fd, "w")
        if self.timer is not None:
            self.timer.cancel()
        self._established()

    def _connect_failed(self, reason: str) -> None:
        """A connect (TCP or TLS) failed: forget the socket's registrations before tcp_proxy
        closes it and tries the next host (the next socket may get the same number)."""
        if self.upstream is not None:
            self._unwatch(self.upstream.fileno(), "r")
            self._unwatch(self.upstream.fileno(), "w")
        self.up_connect = self.up_client = None
        self.up_handshake_out.clear()
        super()._connect_failed(reason)

    # -- open -------------------------------------------------------------------------------

    def _established(self, moved=None) -> None:
        self.state = OPEN
        self.timer = None                   # tcp_proxy's connect timer, cancelled by now
        self.upstream_fd = self.upstream.fileno()
        self.up_limit = self.cluster.buffer_limit
        self.down_limit = self.listener.spec.get("buffer_limit", 1 << 20)
        if moved is None:
            if self.initial is not None and self.tls is None:
                data, eof = self.initial        # what the inspectors read of a plain client
                self.initial = None
                self.to_upstream += data
                self.client_eof = self.client_eof or eof
            self._count_rx(len(self.to_upstream))   # what came in with the handshake
            self.istio = istio_tls_session.start(self)
            if self.up_layer is not None and self.to_upstream:
                self.to_upstream[:] = self.up_layer.send_data(bytes(self.to_upstream))
        else:
            up, down = moved
            self.layer = up["layer"]
            self.up_layer = up.get("up_layer")
            self.to_upstream[:] = up["data"]
            self.to_client[:] = down["data"]
            self.client_eof, self.up_done = up["eof"], up["done"]
            self.upstream_eof, self.down_done = down["eof"], down["done"]
        if self.chain.network_filters and rbac_network.gated(self):
            # Envoy's network RBAC: on the first plaintext from the client (or its end), the
            # upstream up by then (tcp_proxy.py _established does the same for splice).
            if self.to_upstream or self.client_eof:
                if moved is None and not self.first_bytes_allowed():
                    return
            else:
                self.rbac_pending = True
        if self.on_idle is not None:
            # A reload is waiting for this connect: hand the connection over before any byte
            # moves, so the adopter starts from exactly this state.
            on_idle, self.on_idle = self.on_idle, None
            self.held = True
            on_idle(self)
            return
        self._run()

    def _run(self) -> None:
        self._flush_upstream()
        if self.state is OPEN:
            self._flush_client()
        if self.state is OPEN:
            self._update_reading()
            if self.idle_timeout and self.timer is None:
                self.timer = self.loop.call_later(self.idle_timeout, self._on_idle_timer)

    def _update_reading(self) -> None:
        if self.paused or self.state is not OPEN:
            return
        self._watch_if(self.client_fd, not self.client_eof and len(self.to_upstream) < self.up_limit,
                       self._on_client_readable)
        self._watch_if(self.upstream_fd, not self.upstream_eof and len(self.to_client) < self.down_limit,
                       self._on_upstream_readable)

    def _first_bytes_allowed(self) -> bool:
        self.rbac_pending = False
        return self.first_bytes_allowed()

    def _on_client_readable(self) -> None:
        try:
            data = self.client.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.fail(f"client read: {exc.strerror}")
            return
        self.last_active = _monotonic()
        if not data:
            self.client_eof = True          # a FIN without close_notify ends the stream too
            if self.rbac_pending and not self._first_bytes_allowed():
                return
        elif self.layer is None:            # a plain client
            if self.rbac_pending and not self._first_bytes_allowed():
                return
            if self.istio is not None:
                data = self.istio.from_client(data)
            self._for_upstream(data)
            self._count_rx(len(data))
        else:
            try:
                plaintext = self.layer.receive_data(data)
            except TLSAlert as exc:
                self._alert(exc)
                return
            self.to_client += self.layer.data_to_send()     # a KeyUpdate we owe, a refusal
            if self.rbac_pending and (plaintext or self.layer.peer_closed) and \
                    not self._first_bytes_allowed():
                return
            if plaintext and self.istio is not None:
                plaintext = self.istio.from_client(plaintext)
            if plaintext:
                self._for_upstream(plaintext)
                self._count_rx(len(plaintext))
            self.client_eof = self.layer.peer_closed
        self._flush_upstream()
        if self.state is OPEN:
            self._flush_client()
            self._update_reading()

    def _for_upstream(self, plaintext) -> None:
        if self.up_layer is None:
            self.to_upstream += plaintext
        else:
            self.to_upstream += self.up_layer.send_data(plaintext)

    def _for_client(self, plaintext) -> None:
        if self.layer is None:
            self.to_client += plaintext
        else:
            self.to_client += self.layer.send_data(plaintext)

    def _count_rx(self, n: int) -> None:
        counters = self.stats.counters
        counters[self.chain.rx_bytes] += n
        counters[self.cluster.stat["upstream_cx_tx_bytes_total"]] += n

    def _recv_upstream(self) -> bytes | None:
        """One read of the upstream socket: its bytes (b"" at its end), or None when there
        is nothing to read yet or the read failed (the connection is failing)."""
        try:
            data = self.upstream.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self.fail(f"upstream read: {exc.strerror}")
            return None
        self.last_active = _monotonic()
        return data

    def _on_upstream_readable(self) -> None:
        data = self._recv_upstream()
        if data is None:
            return
        if not data:
            self.upstream_eof = True
        else:
            up_layer = self.up_layer
            if up_layer is not None:
                try:
                    data = up_layer.receive_data(data)
                except TLSAlert as exc:
                    self._upstream_alert(exc)
                    return
                owed = up_layer.data_to_send()      # a KeyUpdate we owe the upstream
                if owed:
                    self.to_upstream += owed
                    self._flush_upstream()
                    if self.state is not OPEN:
                        return
                self.upstream_eof = up_layer.peer_closed
            if data and self.istio is not None:
                data = self.istio.from_upstream(data)
            if data:
                self._for_client(data)
                counters = self.stats.counters
                counters[self.chain.tx_bytes] += len(data)
                counters[self.cluster.stat["upstream_cx_rx_bytes_total"]] += len(data)
        self._flush_client()
        if self.state is OPEN:
            self._update_reading()

    def _flush_upstream(self) -> None:
        buf = self.to_upstream
        if buf and not self._send(self.upstream, buf, "upstream"):
            return
        if not buf and self.client_eof and not self.up_done:
            up_layer = self.up_layer
            if up_layer is not None and not up_layer.closed:
                buf += up_layer.close()         # close_notify, then FIN
                if not self._send(self.upstream, buf, "upstream"):
                    return
            if not buf:
                self.up_done = True
                _shutdown(self.upstream)
                self._maybe_done()
                return
        self._watch_if(self.upstream_fd, bool(buf), self._on_upstream_writable, "w")

    def _flush_client(self) -> None:
        buf = self.to_client
        if buf and not self._send(self.client, buf, "client"):
            return
        if not buf and self.upstream_eof and not self.down_done and self.state is OPEN:
            if self.layer is not None and not self.layer.closed:
                buf += self.layer.close()       # close_notify, then FIN
                if not self._send(self.client, buf, "client"):
                    return
            if not buf:
                self.down_done = True
                _shutdown(self.client)
                self._maybe_done()
                return
        self._watch_if(self.client_fd, bool(buf), self._on_client_writable, "w")

    def _on_upstream_writable(self) -> None:
        self._flush_upstream()
        self._update_reading()

    def _on_client_writable(self) -> None:
        self._flush_client()
        if self.handshake is None:
            self._update_reading()

    def _send(self, sock: socket.socket, buf: bytearray, side: str) -> bool:
        """Write what the socket takes from `buf`; False if the connection failed."""
        try:
            n = sock.send(buf)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            self.fail(f"{side} write: {exc.strerror}")
            return False
        del buf[:n]
        return True

    def _maybe_done(self) -> None:
        if self.up_done and self.down_done:
            self.close()

    def _alert(self, exc: TLSAlert) -> None:
        """A bad record: pass on the plaintext before it, send the layer's alert, close."""
        log.debug("connection %d: TLS alert: %s", self.id, exc)
        self.tls.count_session_error()
        if exc.data and self.upstream is not None and self.state is OPEN:
            self._for_upstream(exc.data)
            self._flush_upstream()
        self.to_client += self.layer.data_to_send()
        self._flush_client()
        self.close()

    def _upstream_alert(self, exc: TLSAlert) -> None:
        """A bad record from the upstream: the plaintext before it still reaches the client,
        the upstream gets the layer's alert, and the connection closes."""
        log.debug("connection %d: upstream TLS alert: %s", self.id, exc)
        if exc.data:
            self._for_client(exc.data)
            self._flush_client()
        self._send_best_effort(self.upstream, self.up_layer.data_to_send())
        self.close()

    def _send_best_effort(self, sock, data: bytes) -> None:
        if data and sock is not None:
            try:
                sock.send(data)
            except OSError:
                pass

    # -- registrations ----------------------------------------------------------------------

    def _watch(self, fd: int, mode: str, callback) -> None:
        key = (fd, mode)
        if key not in self.io:
            self.io.add(key)
            (self.loop.add_reader if mode == "r" else self.loop.add_writer)(fd, callback)

    def _unwatch(self, fd: int, mode: str) -> None:
        key = (fd, mode)
        if key in self.io:
            self.io.discard(key)
            (self.loop.remove_reader if mode == "r" else self.loop.remove_writer)(fd)

    def _watch_if(self, fd: int, on: bool, callback, mode: str = "r") -> None:
        if self.state is CLOSED or self.paused:
            return
        if on:
            self._watch(fd, mode, callback)
        else:
            self._unwatch(fd, mode)

    def _stop_io(self) -> None:
        for fd, mode in list(self.io):
            self._unwatch(fd, mode)

    def close(self) -> None:
        if self.state is CLOSED:
            return
        self._stop_io()
        layer = self.layer
        if layer is not None and not self.paused and layer.error is None and not layer.closed:
            self.to_client += layer.close()         # idle timeout, upstream gone: close_notify
        if self.to_client and not self.paused:
            self._send_best_effort(self.client, self.to_client)    # the last records
        up_layer = self.up_layer
        if up_layer is not None and not self.paused and up_layer.error is None and not up_layer.closed:
            self._send_best_effort(self.upstream, bytes(self.to_upstream) + up_layer.close())
        if self.istio is not None:
            self.istio.closed()
        super().close()

    # -- the Connection interface (worker/connection.py) -------------------------------------

    def readiness(self) -> Move:
        if self.paused or self.state is CLOSED or self.stays_in_worker():
            return Move.NEVER
        if self.state is OPEN:
            return Move.NOW
        if self.handshake is None and (self.layer is not None or self.tls is None):
            # Handshaken (or a plain client): the upstream connect, TCP or TLS, is in flight.
            return Move.WHEN_IDLE
        return Move.NEVER               # the handshake runs: it is short, it ends here

    def hold_when_idle(self, on_idle) -> None:
        """Once the upstream connect in flight has ended, call on_idle(self) with the
        connection open and nothing read or written yet."""
        if self.readiness() is Move.NOW:
            on_idle(self)
        else:
            self.on_idle = on_idle

    def cancel_hold(self) -> None:
        self.on_idle = None
        if self.held:
            self.held = False
            self._run()

    def buffered(self) -> tuple[int, int]:
        return len(self.to_upstream), len(self.to_client)

    def export(self, client_only: bool = False) -> Export:
        """Pause and describe this connection: both sockets, each record layer's state and
        the bytes not yet written each way (record "tls-tcp" when only the client speaks
        TLS, else "tls-origin-tcp"). `client_only` (write migration) does not apply: the
        record layers need both ends, so both move."""
        if self.state is not OPEN:
            raise RuntimeError(f"connection {self.id} is not open")
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._stop_io()
        self.paused, self.held = True, False
        fields = {"id": self.id, "listener": self.listener.name,
                  "peer": list(self.peer) if self.peer else None,
                  "original": list(self.original) if self.original else None,
                  "chain": self.chain.index,
                  "cluster": self.cluster.name, "host": [self.host.address, self.host.port],
                  "tls": export_state(self.layer) if self.layer is not None else None,
                  "up": {"data": bytes(self.to_upstream), "eof": self.client_eof, "done": self.up_done},
                  "down": {"data": bytes(self.to_client), "eof": self.upstream_eof, "done": self.down_done}}
        if self.up_layer is None and self.layer is not None:
            return Export("tls-tcp", fields, [self.client_fd, self.upstream_fd])
        fields["upstream_tls"] = export_state(self.up_layer) if self.up_layer is not None else None
        return Export("tls-origin-tcp", fields, [self.client_fd, self.upstream_fd])

    def resume(self) -> None:
        """The move failed: nothing was read or written meanwhile, carry on."""
        self.paused = self.held = False
        if self.state is OPEN:
            self._run()

    def migrated(self, channel, new_id: int) -> None:
        """Adopted elsewhere: let go of the sockets without a close_notify or a shutdown, and
        never use this layer again (its sequence numbers continue in the adopter)."""
        self.layer = self.up_layer = None
        self.to_client.clear()
        self.to_upstream.clear()
        super().migrated(channel, new_id)

    @classmethod
    def adopt(cls, worker, listener, fields: dict, fds: list[int], conn_id: int, channel=None):
        """Records "tls-tcp" and "tls-origin-tcp": continue the sessions here. tcp_proxy's
        adoption does the sockets, cluster and host; the layers ride in with the
        upstream-bound direction."""
        up = dict(fields["up"], layer=_imported(fields["tls"]),
                  up_layer=_imported(fields.get("upstream_tls")))
        return super().adopt(worker, listener, dict(fields, up=up), fds, conn_id, channel)


def _imported(state):
    return import_state(state) if state is not None else None


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _refusal(worker, listener, fields: dict) -> str | None:
    """Why this worker cannot continue a "tls-tcp" record, before its descriptors are used."""
    reason = _cluster_missing(worker, listener, fields)
    if reason is not None:
        return reason
    index = fields.get("chain") or 0
    chain = listener.chains[index] if index < len(listener.chains) else listener.default_chain
    client_tls = fields["tls"] is not None
    if chain is None or chain.tcp_proxy is None or (chain.tls is not None) != client_tls:
        kind = "a TLS" if client_tls else "a plain"
        return f"filter chain {index} of {listener.name!r} is not {kind} tcp_proxy chain here"
    try:
        for state in (fields["tls"], fields.get("upstream_tls")):
            if state is not None:
                import_state(state)
    except StateError as exc:
        return str(exc)
    return None


register("tls-tcp", TlsProxyConnection.adopt, _refusal)
register("tls-origin-tcp", TlsProxyConnection.adopt, _refusal)

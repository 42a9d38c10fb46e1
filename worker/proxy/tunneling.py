"""tcp_proxy's `tunneling_config`: the client's TCP stream carried inside an HTTP CONNECT to
the upstream (Envoy's TCP tunneling; Istio's HBONE, over mTLS HTTP/2 to port 15008).

A `TunnelingConnection` is a TlsProxyConnection (tls_proxy.py: bytes through Python, TLS on
either side or none) with one more stage on the upstream side: once the upstream connect is
done (TCP, then the cluster's TLS handshake if it originates TLS), the CONNECT request goes
out and the connection stays CONNECTING until a 2xx answers it, as in Envoy, where tcp_proxy
reads nothing from the client before the tunnel is up. A refusal (another status, a reset, a
close) is a failed connect: counted in upstream_cx_connect_fail, retried on the next host
within max_connect_attempts, else the client is closed. The cluster's connect_timeout covers
the CONNECT exchange too.

Then, per direction: the client's bytes become the stream's DATA (HTTP/2) or go as they are
(HTTP/1.1), the tunnel's payload goes to the client. The client's FIN becomes END_STREAM
(HTTP/2; the connection stays open for the rest of the answer) or a FIN (HTTP/1.1); the
upstream's END_STREAM or EOF becomes a FIN to the client. A reset closes both.

The protocol is the cluster's (HTTP/2 when it has http2_protocol_options, HTTP/1.1
otherwise); the CONNECT's authority is `hostname` rendered with Envoy's %-operators for the
connection (%DOWNSTREAM_LOCAL_ADDRESS%: the address the client dialled), and
`headers_to_add` are added to it. A tunnel never moves at a reload (its HTTP/2 state is not
exported): it drains where it is.
"""

from __future__ import annotations

import logging

from ..codecs.connect_client import ConnectClient
from ..connection import Lifecycle, Move
from ..tls.records import TLSAlert
from .tls_proxy import RECV_SIZE, TlsProxyConnection

log = logging.getLogger("baton.tunneling")

CONNECTING, OPEN, CLOSED = Lifecycle.CONNECTING, Lifecycle.OPEN, Lifecycle.CLOSED


class TunnelingConnection(TlsProxyConnection):
    kind = "tunnel"
    __slots__ = ("tunnel", "connect_out")

    def __init__(self, worker, listener, client, peer, conn_id: int, chain=None):
        super().__init__(worker, listener, client, peer, conn_id, chain)
        self.tunnel = None              # the ConnectClient of the current attempt
        # The CONNECT exchange's bytes for the upstream socket (TLS records if it speaks
        # TLS): to_upstream may already hold the client's first plaintext meanwhile.
        self.connect_out = bytearray()

    # -- the CONNECT exchange ---------------------------------------------------------------

    def _established(self, moved=None) -> None:
        """The upstream connect (and TLS) is done: ask for the tunnel before opening."""
        config = self.config["tunneling"]
        info = self._info()
        authority = _render(config["hostname"], info)
        headers = [(name, _render(value, info)) for name, value in config["headers"]]
        self.upstream_fd = self.upstream.fileno()
        self.tunnel = ConnectClient(authority, headers, http2=bool(self.cluster.http2))
        self.timer = self.loop.call_later(self.cluster.connect_timeout, self._on_tunnel_timeout)
        self._to_upstream_wire(self.tunnel.start())
        self._flush_connect()
        if self.tunnel is not None and self.state is not CLOSED:
            self._watch(self.upstream_fd, "r", self._on_connect_readable)

    def _info(self):
        from ..connection_log import ConnectionInfo
        local = self.original
        if local is None:
            try:
                local = self.client.getsockname()
            except OSError:
                local = None
        return ConnectionInfo(self.loop.time(), self.peer[:2] if self.peer else None,
                              local[:2] if local else None, self.id)

    def _on_connect_readable(self) -> None:
        try:
            data = self.upstream.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._tunnel_refused(f"upstream read: {exc.strerror}")
            return
        plain = self._from_upstream_wire(data)
        if plain is None:
            return
        tunnel = self.tunnel
        early = tunnel.receive(plain)
        self._to_upstream_wire(tunnel.data_to_send())
        if tunnel.refused is not None:
            self._tunnel_refused(tunnel.refused)
        elif not tunnel.established:
            self._flush_connect()
        else:
            self._open(early, remote_ended=tunnel.remote_ended or not data)

    def _flush_connect(self) -> None:
        buf = self.connect_out
        if buf and not self._send(self.upstream, buf, "upstream"):
            return
        self._watch_if(self.upstream_fd, bool(buf), self._flush_connect, "w")

    def _on_tunnel_timeout(self) -> None:
        self.timer = None
        self.stats.counters[self.cluster.stat["upstream_cx_connect_timeout"]] += 1
        self._tunnel_refused("CONNECT timeout")

    def _tunnel_refused(self, reason: str) -> None:
        log.debug("connection %d: tunnel to %s refused: %s", self.id, self.host.stat_id, reason)
        self._connect_failed(f"tunnel: {reason}")

    def _connect_failed(self, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.tunnel = None
        self.connect_out.clear()
        # The next attempt may be to another host, plain or with a session of its own: this
        # session's keys must not seal its CONNECT, nor its close_notify reach that socket.
        self.up_layer = None
        super()._connect_failed(reason)

    def _open(self, early: bytes, remote_ended: bool) -> None:
        """The tunnel is up: OPEN, as tls_proxy's _established opens, with the client's
        first bytes (an inspector's, the plaintext behind its TLS handshake) framed first.
        The CONNECT exchange is not payload: the byte counters start here."""
        self._unwatch(self.upstream_fd, "r")
        self._unwatch(self.upstream_fd, "w")
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.state = OPEN
        self.up_limit = self.cluster.buffer_limit
        self.down_limit = self.listener.spec.get("buffer_limit", 1 << 20)
        first = bytes(self.to_upstream)
        self.to_upstream[:] = self.connect_out
        self.connect_out.clear()
        if self.initial is not None and self.tls is None:
            data, eof = self.initial        # what the inspectors read of a plain client
            self.initial = None
            first += data
            self.client_eof = self.client_eof or eof
        if first:
            self._count_rx(len(first))
            self._for_upstream(first)
        if early:
            self._for_client(early)
            self._count_tx(len(early))
        self.upstream_eof = remote_ended
        self._run()

    # -- the upstream's wire: TLS records (if it speaks TLS) around the tunnel's bytes -------

    def _to_upstream_wire(self, data: bytes) -> None:
        if not data:
            return
        if self.up_layer is not None:
            data = self.up_layer.send_data(data)
        if self.state is OPEN:
            self.to_upstream += data
        else:
            self.connect_out += data

    def _from_upstream_wire(self, data: bytes) -> bytes | None:
        """Socket bytes -> the tunnel's bytes (TLS opened): b"" at the upstream's end; None
        when there is nothing to hand on (the connection failed, or only part of a record came:
        b"" would read as the upstream's end)."""
        up_layer = self.up_layer
        if up_layer is None or not data:
            return data
        try:
            plain = up_layer.receive_data(data)
        except TLSAlert as exc:
            if self.state is OPEN:
                self._upstream_alert(exc)
            else:
                self._tunnel_refused(f"TLS alert: {exc}")
            return None
        owed = up_layer.data_to_send()          # a KeyUpdate we owe the upstream
        if owed:
            (self.to_upstream if self.state is OPEN else self.connect_out).extend(owed)
        if not plain and not up_layer.peer_closed:
            if owed:
                self._flush_upstream() if self.state is OPEN else self._flush_connect()
            return None
        return plain

    # -- open: the payload each way ---------------------------------------------------------

    def _for_upstream(self, plaintext) -> None:
        self._to_upstream_wire(self.tunnel.send(bytes(plaintext)))

    def _count_tx(self, n: int) -> None:
        counters = self.stats.counters
        counters[self.chain.tx_bytes] += n
        counters[self.cluster.stat["upstream_cx_rx_bytes_total"]] += n

    def _on_upstream_readable(self) -> None:
        data = self._recv_upstream()
        if data is None:
            return
        plain = self._from_upstream_wire(data)
        if plain is None:
            return
        tunnel = self.tunnel
        payload = tunnel.receive(plain)
        self._to_upstream_wire(tunnel.data_to_send())
        if payload:
            self._for_client(payload)
            self._count_tx(len(payload))
        if tunnel.failed is not None:
            self._flush_client()
            self.fail(tunnel.failed)
            return
        if tunnel.remote_ended or not data or (self.up_layer is not None and
                                               self.up_layer.peer_closed):
            self.upstream_eof = True
        self._flush_upstream()
        if self.state is OPEN:
            self._flush_client()
        if self.state is OPEN:
            self._update_reading()

    def _flush_upstream(self) -> None:
        tunnel = self.tunnel
        if tunnel is None or not tunnel.http2:
            super()._flush_upstream()       # HTTP/1.1: the client's FIN is the tunnel's end
            return
        # HTTP/2: the client's FIN is END_STREAM; the connection stays up for the answer.
        if self.client_eof and not tunnel.local_ended:
            self._to_upstream_wire(tunnel.end())
        buf = self.to_upstream
        if buf and not self._send(self.upstream, buf, "upstream"):
            return
        if not buf and tunnel.local_ended and not tunnel.held() and not self.up_done:
            self.up_done = True
            self._maybe_done()
            if self.state is CLOSED:
                return
        self._watch_if(self.upstream_fd, bool(buf), self._on_upstream_writable, "w")

    def _update_reading(self) -> None:
        if self.paused or self.state is not OPEN:
            return
        # What the peer's HTTP/2 window holds back counts against the buffer limit too.
        held = self.tunnel.held() if self.tunnel is not None else 0
        self._watch_if(self.client_fd, not self.client_eof and
                       len(self.to_upstream) + held < self.up_limit, self._on_client_readable)
        self._watch_if(self.upstream_fd, not self.upstream_eof and
                       len(self.to_client) < self.down_limit, self._on_upstream_readable)

    def readiness(self) -> Move:
        return Move.NEVER           # the tunnel's HTTP/2 state does not move: drains here


def _render(template: str, info) -> str:
    if "%" not in template:
        return template
    from .http.formatter import compile_header_value
    return compile_header_value(template)(info)

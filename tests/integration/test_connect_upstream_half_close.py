"""The upstream half-closes first in a tunnel (a terminated CONNECT, a websocket upgrade),
differential against Envoy 1.40 on the same bootstraps.

The upstream sends a greeting and its FIN at once, then reads what comes. Its FIN ends the
response, and Envoy 1.40 ends the stream with it while the client's side is still open: an
HTTP/2 client gets END_STREAM then RST_STREAM NO_ERROR (RFC 9113 8.1), an HTTP/1.1 client the
end of the connection, and the upstream connection is closed (a FIN) without waiting for the
client's end; what the client sends later reaches no one. (With the runtime flag
`envoy.reloadable_features.allow_multiplexed_upstream_half_close` Envoy resets the HTTP/2 stream
CONNECT_ERROR instead; Baton reads no runtime flags.) Baton does the same; the one difference
left is how an HTTP/1.1 client's connection ends: Baton sends its FIN at once and reads the
client's bytes away until the client's end (or delayed_close_timeout); Envoy sends nothing
for delayed_close_timeout (1 s), still carrying what the client sends in that window to the
upstream, then closes both (measured; the assertions below hold for both)."""

from __future__ import annotations

import queue
import socket
import socketserver
import threading

import pytest

from .clients import Http1Reader
from .conftest import free_port, static_cluster
from .test_hbone_tunnel import HCM, T, _bootstrap, _listener, _start, terminator

GREETING = b"220 the upstream speaks first\r\n"
LATER = b"the client goes on after the upstream's FIN"
WEBSOCKET_ANSWER = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"


class HalfClosingUpstream(socketserver.ThreadingTCPServer):
    """Accepts connections; to each sends GREETING (after a 101 for a websocket upgrade) and
    its FIN at once, then reads until the peer's end and puts (the bytes it read after the
    request head, "fin" or "reset") on `reports`."""

    daemon_threads = True

    def __init__(self, websocket: bool):
        super().__init__(("127.0.0.1", 0), _HalfClose)
        self.port = self.server_address[1]
        self.websocket = websocket
        self.reports: queue.Queue = queue.Queue()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _HalfClose(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn, got, end = self.request, b"", "timeout"
        conn.settimeout(20)
        try:
            if self.server.websocket:       # its request's head first
                while b"\r\n\r\n" not in got:
                    got += conn.recv(65536)
                got = got.partition(b"\r\n\r\n")[2]
                conn.sendall(WEBSOCKET_ANSWER)
            conn.sendall(GREETING)
            conn.shutdown(socket.SHUT_WR)
            while chunk := conn.recv(65536):
                got += chunk
            end = "fin"
        except socket.timeout:
            pass
        except OSError:
            end = "reset"
        self.server.reports.put((got, end))


def websocket_proxy(admin: int, port: int, upstream: int) -> dict:
    hcm = {"@type": HCM, "stat_prefix": "ws", "route_config": {"name": "r", "virtual_hosts": [{
        "name": "all", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": T + "envoy.extensions.filters.http.router.v3.Router"}}],
        "upgrade_configs": [{"upgrade_type": "websocket"}]}
    return _bootstrap(admin, [_listener("ws", port, [
        {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}])],
        [static_cluster("up", upstream)])


def _h1_tunnel(port: int, kind: str, upstream: HalfClosingUpstream) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        reader = Http1Reader(s)
        if kind == "websocket":
            s.sendall(b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        else:
            s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      "x-tunnel: hbone\r\n\r\n".encode())
        assert reader.head()[0] == (101 if kind == "websocket" else 200)
        assert reader.exact(len(GREETING)) == GREETING
        assert reader.buf == b"" and s.recv(1) == b""   # the upstream's FIN, as ours
        # The upstream connection ended with the response, our side still open.
        assert upstream.reports.get(timeout=20) == (b"", "fin")
        try:
            s.sendall(LATER)            # to no one (Envoy has closed: this may be refused)
        except OSError:
            pass


def _h2_tunnel(port: int, upstream: HalfClosingUpstream) -> None:
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "CONNECT"), (":authority", f"127.0.0.1:{port}"),
                              ("x-tunnel", "hbone")])
        s.sendall(conn.data_to_send())
        seen = []
        while not seen or not isinstance(seen[-1], (h2.events.StreamReset,
                                                    h2.events.ConnectionTerminated)):
            data = s.recv(65536)
            assert data, f"the connection ended after {seen}"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    seen.append(("status", dict(event.headers)[b":status"]))
                elif isinstance(event, h2.events.DataReceived) and event.data:
                    seen.append(("data", event.data))   # (an empty frame may carry the end)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset,
                                        h2.events.ConnectionTerminated)):
                    seen.append(event)
            s.sendall(conn.data_to_send())
        assert seen[:2] == [("status", b"200"), ("data", GREETING)]
        assert isinstance(seen[2], h2.events.StreamEnded)
        assert isinstance(seen[3], h2.events.StreamReset) and seen[3].error_code == 0
        assert upstream.reports.get(timeout=20) == (b"", "fin")


@pytest.mark.parametrize("kind", ["connect-h1", "connect-h2", "websocket"])
@pytest.mark.parametrize("proxy", ["envoy", "baton"])
def test_upstream_fin_ends_the_tunnel(tmp_path, proxy, kind):
    port = free_port()
    upstream = HalfClosingUpstream(websocket=kind == "websocket")
    if kind == "websocket":
        bootstrap = websocket_proxy(free_port(), port, upstream.port)
    else:
        bootstrap = terminator(free_port(), port, upstream.port, kind[-2:])
    try:
        p = _start(proxy, tmp_path / proxy, bootstrap)
        try:
            if kind == "connect-h2":
                _h2_tunnel(port, upstream)
            else:
                _h1_tunnel(port, kind, upstream)
        finally:
            p.stop()
        assert upstream.reports.empty()     # one connection
    finally:
        upstream.stop()

"""HTTPS connections at `baton reload` (worker/proxy/https.py): an idle HTTP/1.1-over-TLS
keep-alive connection moves to the next generation with its record layer's state (record
"https1-idle") and serves on with no reconnect through 20 reloads and a `baton recycle` of
each worker, TLS 1.3 and TLS 1.2; an
HTTP/2-over-TLS connection moves too (record "http2-idle" with the TLS state), as plain HTTP/2
does. Real `baton` processes, Python ssl clients and curl, the recording upstream."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl

from ..tls_certs import leaf, make_ca
from ..waiting import wait_until
from .conftest import free_port
from .test_https import https_bootstrap
from .test_tls_reload import _reload_ok
from .tls_clients import client_context, ssl_stats, tls_transport_socket


def test_idle_https_keep_alive_moves_through_20_reloads_and_a_recycle(baton, recorder):
    ca = make_ca("ecdsa")
    port = free_port()
    b = baton(https_bootstrap(port, recorder, tls_transport_socket(
        leaf(ca, "ecdsa"), alpn=["h2", "http/1.1"])), concurrency=2)
    clients = [http.client.HTTPSConnection("localhost", port, timeout=10,
                                           context=client_context(ca, alpn=["http/1.1"], version=v))
               for v in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2)]
    sockets = []
    try:
        for round_ in range(23):
            for i, conn in enumerate(clients):
                conn.request("GET", f"/r/{round_}/{i}")
                response = conn.getresponse()
                body = response.read()
                assert response.status == 200, body
                assert json.loads(body)["path"] == f"/r/{round_}/{i}"
                if round_ == 0:
                    sockets.append(conn.sock)
                assert conn.sock is sockets[i]          # the same TLS session all along
            if round_ < 20:
                _reload_ok(b)
            elif round_ < 22:           # then `baton recycle` of each worker moves them too
                worker = round_ - 20
                old = b.status()["workers"][worker]["pid"]
                result = b.cli("recycle", "--worker", str(worker))
                assert result.returncode == 0, result.stderr
                wait_until(lambda: b.status()["workers"][worker]["pid"] not in (old, None), 20,
                           "the recycle")
    finally:
        for conn in clients:
            conn.close()
    assert not re.search(r"[1-9][0-9]* stay to drain", b.log)
    # No reconnect: two handshakes over all generations (counters add up across them).
    assert ssl_stats(b, port)["handshake"] == 2


def _h2_get(sock, client, path: str) -> tuple[int, list]:
    """One GET on an h2 client connection over `sock`: (status, events seen meanwhile)."""
    import h2.events
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, [(":method", "GET"), (":scheme", "https"),
                                    (":authority", "localhost"), (":path", path),
                                    ("x-custom-header", "the same value, indexed by HPACK")],
                        end_stream=True)
    sock.sendall(client.data_to_send())
    status, seen = None, []
    while True:
        data = sock.recv(65536)
        assert data, "the connection closed"
        events = client.receive_data(data)
        seen += events
        sock.sendall(client.data_to_send())
        for event in events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                status = int(dict(event.headers)[b":status"])
            if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                return status, seen


def test_http2_over_tls_moves_at_a_reload(baton, recorder):
    """An HTTP/2-over-TLS connection moves to the new generation with its HTTP/2 state (the
    HPACK table the client's encoder refers to, windows, stream ids) and its TLS session
    (worker/proxy/http/h2move.py): the requests after each reload go on the same connection,
    with no GOAWAY and no second handshake."""
    import h2.config
    import h2.connection
    import h2.events
    ca = make_ca("ecdsa")
    port = free_port()
    b = baton(https_bootstrap(port, recorder, tls_transport_socket(
        leaf(ca, "ecdsa"), alpn=["h2", "http/1.1"])), concurrency=1)
    context = client_context(ca, alpn=["h2"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20),
                             server_hostname="localhost") as sock:
        assert sock.selected_alpn_protocol() == "h2"
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        sock.sendall(client.data_to_send())
        for i in range(21):         # issue 12: through 20 consecutive reloads
            if i:
                _reload_ok(b)
                wait_until(lambda: b.log.count("moved 1 of 1 connection(s)") >= i, 10,
                           "the connection moved")
            status, seen = _h2_get(sock, client, f"/r{i}")
            assert status == 200
            assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in seen)
    assert ssl_stats(b, port)["handshake"] == 1


def test_an_https_request_in_flight_finishes_then_its_connection_moves(baton, recorder):
    """A reload while a slow request is in flight on an HTTPS keep-alive connection: the
    response comes from the old generation (forwarded through the new one when the
    connection moved first, inflight.py), and the next request on the same TLS session is
    served by the new one; a connection that moved is not counted as staying to drain."""
    import threading
    ca = make_ca("ecdsa")
    port = free_port()
    b = baton(https_bootstrap(port, recorder, tls_transport_socket(leaf(ca, "ecdsa"))),
              concurrency=1)
    conn = http.client.HTTPSConnection("localhost", port, timeout=10, context=client_context(ca))
    try:
        conn.request("GET", "/first")
        assert conn.getresponse().read()
        sock = conn.sock
        conn.request("GET", "/slow", headers={"x-test-delay-ms": "1500"})
        wait_until(lambda: b.stats().get("http.ingress_http.downstream_rq_active", 0) == 1, 10,
                   "the slow request in flight")
        old = b.master_pid()
        reload = threading.Thread(target=lambda: b.reload())
        reload.start()
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["path"] == "/slow"
        reload.join(30)
        b.wait_previous_gone(old)
        conn.request("GET", "/after")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["path"] == "/after"
        assert conn.sock is sock
    finally:
        conn.close()
    assert "1 stay to drain" not in b.log
    assert ssl_stats(b, port)["handshake"] == 1


def test_a_reload_waits_for_a_handshake_in_progress_then_moves_the_connection(baton, recorder):
    """The client has connected but not said hello when the reload starts moving
    connections: the old generation waits for the handshake, serves nothing itself, and
    moves the connection at its first idle moment; the session goes on in the new one."""
    import socket
    import threading
    ca = make_ca("ecdsa")
    port = free_port()
    b = baton(https_bootstrap(port, recorder, tls_transport_socket(leaf(ca, "ecdsa"))),
              concurrency=1)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    wait_until(lambda: b.stats().get("http.ingress_http.downstream_cx_active") == 1, 10,
               "the connection accepted")
    old = b.master_pid()
    results = []
    reload = threading.Thread(target=lambda: results.append(b.reload()))
    reload.start()
    try:
        wait_until(lambda: "moving connections" in b.log, 20, "the old generation moving")
        tls = client_context(ca).wrap_socket(raw, server_hostname="localhost")
        conn = http.client.HTTPSConnection("localhost", port, timeout=10)
        conn.sock = tls                     # this very session
        for path in ("/during", "/after"):
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["path"] == path
            if path == "/during":
                reload.join(40)
                assert results and results[0].returncode == 0, results
                b.wait_previous_gone(old)
        assert conn.sock is tls
        conn.close()
    finally:
        reload.join(40)
    assert "1 stay to drain" not in b.log
    assert ssl_stats(b, port)["handshake"] == 1

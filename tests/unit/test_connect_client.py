"""The client side of a CONNECT tunnel (worker/codecs/connect_client.py), on bytes: the
HTTP/1.1 head it writes, a 2xx opening the tunnel (payload right behind the head included),
the refusals, and HTTP/2's END_STREAM for the client's end. The HTTP/2 data path against real
peers: tests/integration/test_hbone_tunnel.py."""

from baton.worker.codecs.connect_client import MAX_RESPONSE_HEAD, ConnectClient
from baton.worker.codecs.http2 import H2_PREFACE


def test_http1_head_then_raw_bytes():
    c = ConnectClient("10.0.0.2:8080", [("baggage", "k=v")], http2=False)
    assert c.start() == (b"CONNECT 10.0.0.2:8080 HTTP/1.1\r\nhost: 10.0.0.2:8080\r\n"
                         b"baggage: k=v\r\n\r\n")
    assert c.receive(b"HTTP/1.1 200 Connection est") == b"" and not c.established
    assert c.receive(b"ablished\r\nx: y\r\n\r\nfirst") == b"first"
    assert c.established and c.status == 200 and c.refused is None
    assert c.send(b"raw") == b"raw" and c.end() == b"" and c.local_ended
    assert c.receive(b"more") == b"more" and not c.remote_ended
    assert c.receive(b"") == b"" and c.remote_ended


def test_http1_refusals():
    c = ConnectClient("h:1", http2=False)
    c.start()
    assert c.receive(b"HTTP/1.1 403 Forbidden\r\n\r\nbody") == b""
    assert not c.established and c.refused == "CONNECT answered 403"
    c = ConnectClient("h:1", http2=False)
    c.start()
    c.receive(b"garbage\r\n\r\n")
    assert c.refused == "malformed CONNECT response"
    c = ConnectClient("h:1", http2=False)
    c.start()
    c.receive(b"HTTP/1.1 200 OK\r\n" + b"x: " + b"y" * MAX_RESPONSE_HEAD)
    assert c.refused == "CONNECT response head too large"
    c = ConnectClient("h:1", http2=False)
    c.start()
    c.receive(b"")
    assert c.refused and not c.established


def test_http2_connect_head_and_end_stream():
    c = ConnectClient("10.0.0.2:8080", [("x-tunnel", "hbone")])
    out = c.start()
    assert out.startswith(H2_PREFACE) and c.stream_id == 1
    assert c.send(b"") == b"" and not c.established
    # END_STREAM: an empty DATA frame on stream 1 with flag 0x1.
    assert c.end().endswith(b"\x00\x00\x00\x00\x01\x00\x00\x00\x01") and c.local_ended
    assert c.end() == b""

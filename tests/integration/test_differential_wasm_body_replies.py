"""Differential: a proxy-wasm plugin's local reply (proxy_send_local_response) from its body
and trailer callbacks, through Envoy 1.40 and Baton (review R2, issue 14).

- "late" (reply_in_response_body.wat): the reply comes from proxy_on_response_body, after the
  head went out: Envoy resets the stream (no body, the HTTP/1.1 connection closes,
  downstream_rq_tx_reset); Baton ignored the reply and sent the whole body.
- "waf" (reply_at_body_end.wat): a 403 from proxy_on_request_body at the body's end, two
  POSTs pipelined: the request was read whole, so Envoy keeps the connection and answers
  both; Baton said connection: close (its "request complete" meant "past the filters").
- "rt" / "msd" (hold_body_forever.wat): the body arrived whole and the plugin holds it:
  Envoy's request_timeout is disarmed by the codec's end (no answer), max_stream_duration
  answers 504 (a request received whole); Baton answered 408 to both.
- "addtr" (add_trailer_and_pause.wat): request trailers added at the body's end before a
  Pause, continued at the next tick: Envoy 200 without response trailers; Baton sent them
  to the client as the response's trailers (x-added: secret).
- "tr" (reply_in_trailers.wat): a 403 from proxy_on_request_trailers (an HTTP/2 POST with
  trailers): Envoy answers it and nothing reaches the upstream; Baton forwarded the request.
"""

from __future__ import annotations

import base64
import socket
from concurrent.futures import ThreadPoolExecutor

import h2.config
import h2.connection
import h2.events
import wasmtime

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import Closed, Connection
from .differential.proxies import module_pair
from .test_differential_wasm import FIXTURES, wasm_filter


def _plugin(name: str) -> dict:
    code = wasmtime.wat2wasm((FIXTURES / name).read_text())
    return wasm_filter({"inline_bytes": base64.b64encode(code).decode()}, "", "")


def replies_bootstrap(upstreams: dict[str, int]):
    routes = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [
            http_listener("late", ports["late"], routes,
                          http_filters=[_plugin("reply_in_response_body.wat")]),
            http_listener("tr", ports["tr"], routes,
                          http_filters=[_plugin("reply_in_trailers.wat")]),
            http_listener("waf", ports["waf"], routes,
                          http_filters=[_plugin("reply_at_body_end.wat")]),
            http_listener("rt", ports["rt"], routes, request_timeout="0.5s",
                          http_filters=[_plugin("hold_body_forever.wat")]),
            http_listener("addtr", ports["addtr"], routes,
                          http_filters=[_plugin("add_trailer_and_pause.wat")]),
            http_listener("msd", ports["msd"], routes,
                          common_http_protocol_options={"max_stream_duration": "0.5s"},
                          http_filters=[_plugin("hold_body_forever.wat")])],
            [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-wasm-body-replies", replies_bootstrap,
                             ["late", "tr", "waf", "rt", "msd", "addtr"])


def read_to_end(sock: socket.socket, seconds: float = 3.0) -> tuple[bytes, str]:
    """Everything until the proxy closes (or resets): (the bytes, how it ended)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, "closed"
            data += chunk
    except socket.timeout:
        return data, "open"
    except ConnectionResetError:
        return data, "reset"


def test_a_local_reply_from_the_response_body_callback_resets(pair):
    out = {}
    for name in ("envoy", "baton"):
        target = pair.target(name)
        before = target.stats("http.late.").get("http.late.downstream_rq_tx_reset", 0)
        with socket.create_connection(("127.0.0.1", target.ports["late"])) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nhost: diff.test\r\n"
                         b"x-test-body-size: 100000\r\n\r\n")
            data, state = read_to_end(sock)
        after = target.stats("http.late.")["http.late.downstream_rq_tx_reset"]
        out[name] = (data.split(b"\r\n")[0], len(data.split(b"\r\n\r\n", 1)[-1]),
                     state != "open", after - before)
    assert out["baton"] == out["envoy"], out
    assert out["envoy"] == (b"HTTP/1.1 200 OK", 0, True, 1), out


def h2_post_with_trailers(port: int, key: str) -> bytes | None:
    """An HTTP/2 POST with a body and trailers: the response's :status (None: reset)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":path", "/x"), (":scheme", "http"),
                          (":authority", "diff.test"), ("x-test-key", key)])
    conn.send_data(1, b"0123456789")
    conn.send_headers(1, [("x-t", "1")], end_stream=True)
    status = None
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(3)
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                return status
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return status
            sock.sendall(conn.data_to_send())


def test_a_local_reply_from_the_request_trailers_callback(pair, recorder):
    out = {}
    for name in ("envoy", "baton"):
        target = pair.target(name)
        key = target.key("trailers-reply")
        out[name] = (h2_post_with_trailers(target.ports["tr"], key), recorder.count(key))
    assert out["baton"] == out["envoy"], out
    assert out["envoy"][0] == b"403", out


def test_rs_too_large_is_listed_from_the_start(pair):
    listed = {name: pair.target(name).stats("http.tr.").get("http.tr.rs_too_large")
              for name in ("envoy", "baton")}
    assert listed == {"envoy": 0, "baton": 0}, listed


def test_a_local_reply_at_the_bodys_end_keeps_the_connection(pair):
    out = {}
    for name in ("envoy", "baton"):
        port = pair.target(name).ports["waf"]
        seen = []
        for framing in (b"content-length: 10\r\n\r\n0123456789",
                        b"transfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n"):
            request = b"POST /x HTTP/1.1\r\nhost: diff.test\r\n" + framing
            with Connection(port) as conn:
                conn.send(request + request)
                for _ in range(2):
                    try:
                        response = conn.read_response()
                    except Closed:
                        seen.append("closed")
                        break
                    seen.append((response.status, response.header("connection")))
        out[name] = seen
    assert out["baton"] == out["envoy"], out
    assert out["envoy"] == [(403, None)] * 4, out


def test_timeouts_once_the_request_arrived_whole_but_a_plugin_holds_it(pair):
    def answer(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /x HTTP/1.1\r\nhost: diff.test\r\n"
                         b"content-length: 10\r\n\r\n0123456789")
            try:
                sock.settimeout(1.5)    # 3 times the timeouts
                return sock.recv(4096).split(b"\r\n")[0]
            except socket.timeout:
                return b"no answer"
    ports = [pair.target(name).ports[listener] for name in ("envoy", "baton")
             for listener in ("rt", "msd")]
    with ThreadPoolExecutor(len(ports)) as pool:    # at once, not in turn
        answers = list(pool.map(answer, ports))
    out = {"envoy": answers[:2], "baton": answers[2:]}
    assert out["baton"] == out["envoy"], out
    assert out["envoy"] == [b"no answer", b"HTTP/1.1 504 Gateway Timeout"], out


def test_request_trailers_added_before_a_pause_do_not_reach_the_client(pair):
    out = {}
    for name in ("envoy", "baton"):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":path", "/x"), (":scheme", "http"),
                              (":authority", "diff.test")])
        conn.send_data(1, b"hello", end_stream=True)
        status = trailers = None
        with socket.create_connection(("127.0.0.1", pair.target(name).ports["addtr"])) as sock:
            sock.settimeout(3)
            sock.sendall(conn.data_to_send())
            ended = False
            while not ended:
                data = sock.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers)[b":status"]
                    elif isinstance(event, h2.events.TrailersReceived):
                        trailers = event.headers
                    elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                        ended = True
                sock.sendall(conn.data_to_send())
        out[name] = (status, trailers)
    assert out["baton"] == out["envoy"], out
    assert out["envoy"] == (b"200", None), out

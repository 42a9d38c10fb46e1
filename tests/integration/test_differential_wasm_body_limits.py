"""Differential: what a client sends through a proxy-wasm plugin with body callbacks stays
within the listener's buffer limit (Envoy 1.40's watermarks, filter_manager.cc
requestDataTooLarge), and a local reply while a plugin holds the response head reaches the
client. Found by review R2 (issue 14).

- /x on "pause": the plugin (pause_headers_body.wat) pauses the request headers for ever and
  has a body callback: the body waits behind the headers (StopAllIterationAndWatermark).
  Over the limit Envoy stops reading the client (measured: 357,376 bytes of a 256 MiB
  upload taken in 4 s); Baton took 100 MB and went on.
- /upper on "early": body.wat buffers the request body to its end, and the upstream answers
  its head at once: over the limit Envoy counts downstream_rq_too_large and resets the
  stream (the response began); Baton buffered without bound.
- /holddead on "hold": hold_response.wat holds the response head until its next tick; the
  head is the proxy's own 503 (a cluster nobody listens on): it must go out after the tick.
"""

from __future__ import annotations

import base64
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import wasmtime

from .conftest import free_port
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import curl, one
from .differential.proxies import module_pair
from .test_differential_wasm import FIXTURES, wasm_filter

LIMIT = 65536
UPLOAD = 32 * 1024 * 1024
BOUND = 4 * 1024 * 1024         # Envoy takes ~0.35 MB: the limit, socket buffers, a window
DEAD = free_port()              # nobody listens


def _plugin(name: str) -> dict:
    code = wasmtime.wat2wasm((FIXTURES / name).read_text())
    return wasm_filter({"inline_bytes": base64.b64encode(code).decode()}, "", "")


def _early_upstream() -> int:
    """An upstream that answers every request's head at once (a chunked 200 that never
    ends) and then reads the body away. Daemon threads: they end with the test process."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve(conn):
        with conn:
            got = b""
            while b"\r\n\r\n" not in got:
                data = conn.recv(65536)
                if not data:
                    return
                got += data
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nearly\r\n")
            while conn.recv(1 << 20):
                pass

    def accept():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


EARLY = _early_upstream()
_silent = socket.socket()       # accepts (the kernel's backlog), never answers
_silent.bind(("127.0.0.1", 0))
_silent.listen(64)
SILENT = _silent.getsockname()[1]


def limits_bootstrap(upstreams: dict[str, int]):
    routes = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/holddead"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/silent"}, "route": {"cluster": "silent", "timeout": "0s"}},
        {"match": {"prefix": "/upper"}, "route": {"cluster": "early", "timeout": "0s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        pause = http_listener("pause", ports["pause"], routes,
                              http_filters=[_plugin("pause_headers_body.wat")])
        early = http_listener("early", ports["early"], routes,
                              http_filters=[_plugin("body.wat")])
        for listener in (pause, early):
            listener["per_connection_buffer_limit_bytes"] = LIMIT
        hold = http_listener("hold", ports["hold"], routes,
                             http_filters=[_plugin("hold_response.wat")])
        forever = http_listener("forever", ports["forever"], routes,
                                http_filters=[_plugin("hold_response_forever.wat")],
                                stream_idle_timeout="0.5s")
        return bootstrap(admin, [pause, early, hold, forever],
                         [cluster("a", [upstreams["a"]]), cluster("dead", [DEAD]),
                          cluster("early", [EARLY]), cluster("silent", [SILENT])])
    return template


recorder, pair = module_pair("diff-wasm-body-limits", limits_bootstrap,
                             ["pause", "early", "hold", "forever"])


def pump(sock: socket.socket, total: int, seconds: float, stall: float = 0.5) -> int:
    """Send up to `total` bytes within `seconds`; stop early once the proxy has taken nothing
    for `stall` seconds (it stopped reading) or closed. -> the bytes it took."""
    sock.setblocking(False)
    sent, block = 0, b"x" * 65536
    end = time.monotonic() + seconds
    while sent < total:
        left = end - time.monotonic()
        if left <= 0:
            break
        _, writable, _ = select.select([], [sock], [], min(stall, left))
        if not writable:
            if left > stall:
                break                   # stalled: the proxy stopped reading
            continue
        try:
            sent += sock.send(block[:total - sent])
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    return sent


def upload(port: int, path: str, seconds: float = 3.0) -> tuple[bytes, int]:
    """POST a 32 MiB body as fast as the proxy takes it: (the first bytes of the answer
    received meanwhile, the bytes the proxy took)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(b"POST %s HTTP/1.1\r\nhost: diff.test\r\ncontent-length: %d\r\n\r\n"
                     % (path.encode(), UPLOAD))
        took = pump(sock, UPLOAD, seconds)
        sock.setblocking(True)
        sock.settimeout(0.5)
        try:
            answer = sock.recv(4096)
        except (socket.timeout, ConnectionResetError):
            answer = b""
        return answer, took


def test_body_behind_a_plugin_paused_on_its_headers_is_bounded(pair):
    for name in ("envoy", "baton"):
        answer, took = upload(pair.target(name).ports["pause"], "/x")
        assert took < BOUND, (name, took)
        assert answer == b"", (name, answer)        # no 413: the body is not buffered


def ended(sock: socket.socket, seconds: float = 3.0) -> bool:
    """Whether the proxy ends the connection within `seconds` (what it sent is read away)."""
    sock.setblocking(True)
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        return False
    except ConnectionResetError:
        pass
    return True


def test_request_body_buffered_after_the_response_began(pair):
    """Over the limit with the response begun: downstream_rq_too_large and a reset, which on
    HTTP/1.1 ends the connection. (The bytes taken differ: Envoy's reset stops reading,
    ~0.65 MB; Baton's HTTP/1.1 reset closes as a delayed close, reading and dropping what the
    client sends for delayed_close_timeout, so not buffered either.)"""
    for name in ("envoy", "baton"):
        target = pair.target(name)
        before = target.stats("http.early.")
        with socket.create_connection(("127.0.0.1", target.ports["early"])) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            sock.sendall(b"POST /upper HTTP/1.1\r\nhost: diff.test\r\n"
                         b"content-length: %d\r\n\r\n" % UPLOAD)
            sock.settimeout(5)
            head = sock.recv(4096)
            pump(sock, UPLOAD, 3.0)
            assert ended(sock), name
        after = target.stats("http.early.")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), (name, head)
        for stat in ("downstream_rq_too_large", "downstream_rq_tx_reset"):
            stat = "http.early." + stat
            assert after.get(stat, 0) - before.get(stat, 0) == 1, (name, stat, before, after)


def test_local_reply_while_the_plugin_holds_its_head(pair):
    """/holddead: the router's own 503 (nobody listens) passes the plugin, which holds its
    head until its tick: the head goes out then, and the reply's body after it."""
    out = {}
    for name in ("envoy", "baton"):
        port = pair.target(name).ports["hold"]
        h1 = one(port, "GET", "/holddead", [("host", "diff.test")])
        h2 = curl(port, "/holddead", http2=True)
        out[name] = [(r.status, r.header("x-held"), r.header("content-length"), r.body)
                     for r in (h1, h2)]
    assert out["baton"] == out["envoy"], out
    assert out["envoy"][0][:2] == (503, "yes"), out


def timed_out(port: int, request: bytes) -> tuple[bytes, bytes]:
    """The answer to `request` (head and body; the date and server headers left out), and
    whether the connection stayed open after it (after a connection: close, Envoy sends its
    FIN when delayed_close_timeout passes, Baton at once: not compared)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        sock.settimeout(5)
        got = b""
        while not got.endswith(b"stream timeout"):
            data = sock.recv(4096)
            if not data:
                break
            got += data
        if b"\r\nconnection: close\r\n" in got.lower():
            return strip_date_server(got), b"closing"
        sock.settimeout(0.2)
        try:
            state = b"closed" if not sock.recv(1) else b"more"
        except socket.timeout:
            state = b"open"
    return strip_date_server(got), state


def strip_date_server(got: bytes) -> bytes:
    lines = [line for line in got.split(b"\r\n")
             if not line.lower().startswith((b"date:", b"server:"))]
    return b"\r\n".join(lines)


def test_idle_timeout_while_the_plugin_holds_the_response_head(pair):
    """The head waits for ever, stream_idle_timeout 0.5 s: Envoy's 504 "stream timeout"
    replaces the held head (sendDirectLocalReply: no x-held), and the connection stays;
    to a POST short of its body, 408 and the connection closes. The same without a plugin
    (/silent: an upstream that never answers)."""
    get = b"GET %s HTTP/1.1\r\nhost: diff.test\r\n\r\n"
    post = b"POST %s HTTP/1.1\r\nhost: diff.test\r\ncontent-length: 10\r\n\r\nabc"
    cases = [(name, request % path) for name in ("envoy", "baton") for request in (get, post)
             for path in (b"/x", b"/silent")]
    ports = {name: pair.target(name).ports["forever"] for name in ("envoy", "baton")}
    with ThreadPoolExecutor(len(cases)) as pool:     # the 8 timeouts at once, not in turn
        answers = list(pool.map(lambda case: timed_out(ports[case[0]], case[1]), cases))
    out = {"envoy": answers[:4], "baton": answers[4:]}
    for case, (envoy, baton) in enumerate(zip(out["envoy"], out["baton"])):
        assert baton == envoy, (case, envoy, baton)
    assert out["envoy"][0][0].startswith(b"HTTP/1.1 504 "), out

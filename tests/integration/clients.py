"""Real client sockets for the integration tests (blocking sockets, threads for concurrency)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

PATTERN = os.urandom(4 << 20)      # sent with a moving offset, so no two chunks line up


def stream_chunks(total: int, seed: int, chunk: int = 256 * 1024):
    offset = (seed * 7919) % len(PATTERN)
    sent = 0
    view = memoryview(PATTERN + PATTERN)
    while sent < total:
        n = min(chunk, total - sent)
        yield view[offset:offset + n]
        offset = (offset + n) % len(PATTERN)
        sent += n


def echo_transfer(port: int, total: int, seed: int, timeout: float = 120.0) -> tuple[str, str]:
    """Send `total` bytes through an echo upstream and read them back: (sent sha, received sha)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent_hash = hashlib.sha256()
    error: list[BaseException] = []

    def sender():
        try:
            for chunk in stream_chunks(total, seed):
                sent_hash.update(chunk)
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported by the caller
            error.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    received = hashlib.sha256()
    count = 0
    buf = bytearray(1 << 20)
    try:
        while True:
            n = sock.recv_into(buf)
            if not n:
                break
            received.update(memoryview(buf)[:n])
            count += n
    finally:
        thread.join()
        sock.close()
    if error:
        raise error[0]
    assert count == total, f"received {count} of {total} bytes"
    return sent_hash.hexdigest(), received.hexdigest()


def roundtrip(port: int, payload: bytes = b"ping", timeout: float = 10.0) -> bytes:
    """Connect, send, half-close, read everything: what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def recv_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        data = sock.recv(65536)
        if not data:
            return bytes(out)
        out += data


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


class Http1Reader:
    """Responses read off one blocking HTTP/1.1 client socket, piece by piece: a test sees
    every byte on the connection it opened (no reconnect could hide behind a library)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the proxy closed the connection")
        self.buf += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self) -> tuple[int, dict]:
        status = int(self.line().split(b" ")[1])
        headers = {}
        while line := self.line():
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        return status, headers

    def chunk(self) -> bytes:
        """One chunk of a chunked body; b"" for the last one (trailers are not expected)."""
        size = int(self.line().split(b";")[0], 16)
        data = self.exact(size)
        assert self.line() == b""
        return data

    def response(self) -> tuple[int, dict, bytes]:
        status, headers = self.head()
        if headers.get("transfer-encoding") == "chunked":
            body = b"".join(iter(self.chunk, b""))
        else:
            body = self.exact(int(headers.get("content-length", 0)))
        return status, headers, body


class Streams:
    """Many connections streaming through an echo upstream at once, driven by one selector
    thread: each sends a deterministic stream at a paced rate and reads its echo back. Any
    early EOF or error is recorded as a disconnect; at the end every stream's sent and received
    sha256 must match. `end()` lets them finish once the test has watched them through what it
    does, without waiting for the paced rate: each sends the rest of its `total` at once (the
    final generation carries those bytes) and half-closes, and every byte must come back. With
    `hold_tail` each stream keeps its last chunk back until `end()`, so the streams are still
    open however long what the test did meanwhile took."""

    def __init__(self, port: int, count: int, total: int, rate: float, chunk: int = 16384,
                 hold_tail: bool = False):
        import selectors
        self.selector = selectors.DefaultSelector()
        self.total, self.rate, self.chunk = total, rate, chunk
        self.held = threading.Event()
        if hold_tail:
            self.held.set()
        self.disconnects: list[str] = []
        self.streams = []
        for i in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setblocking(False)
            data = b"".join(bytes(c) for c in stream_chunks(total, seed=i))
            stream = {"sock": sock, "data": data, "sent": 0, "recv": hashlib.sha256(), "got": 0, "done": False}
            self.streams.append(stream)
            self.selector.register(sock, selectors.EVENT_READ, stream)
        self.stop = threading.Event()
        self.ending = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Streams":
        self.thread.start()
        return self

    def _run(self) -> None:
        import time
        started = time.monotonic()
        while not self.stop.is_set() and not all(s["done"] for s in self.streams):
            if self.ending.is_set():
                allowed = self.total
            else:
                end = self.total - self.chunk if self.held.is_set() else self.total
                allowed = min(end, int((time.monotonic() - started) * self.rate) + self.chunk)
            for s in self.streams:
                if s["done"] or s["sent"] >= allowed:
                    continue
                try:
                    n = s["sock"].send(s["data"][s["sent"]:allowed])
                    s["sent"] += n
                    if s["sent"] == self.total:
                        self._half_close(s)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    self._lost(s, f"send: {exc}")
            for key, _ in self.selector.select(timeout=0.005):
                s = key.data
                try:
                    data = s["sock"].recv(1 << 18)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._lost(s, f"recv: {exc}")
                    continue
                if not data:
                    if s["got"] != self.total:
                        self._lost(s, f"EOF after {s['got']} of {self.total} bytes")
                    else:
                        self._finish(s)
                    continue
                s["recv"].update(data)
                s["got"] += len(data)

    def _half_close(self, s) -> None:
        try:
            s["sock"].shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._lost(s, f"shutdown: {exc}")

    def _lost(self, s, why: str) -> None:
        self.disconnects.append(why)
        self._finish(s)

    def _finish(self, s) -> None:
        s["done"] = True
        self.selector.unregister(s["sock"])
        s["sock"].close()

    def end(self) -> None:
        """Each stream sends the rest of its `total` unpaced and half-closes; `verify()` wants
        every byte sent back."""
        self.ending.set()

    def progress(self) -> int:
        return min(s["got"] for s in self.streams)

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        self.stop.set()

    def verify(self) -> None:
        assert not self.disconnects, self.disconnects[:5]
        for i, s in enumerate(self.streams):
            assert s["done"], f"stream {i} did not finish ({s['got']} of {self.total})"
            assert s["got"] == self.total, f"stream {i}: {s['got']} of {self.total} bytes"
            assert s["recv"].hexdigest() == hashlib.sha256(s["data"]).hexdigest(), \
                f"stream {i} corrupted"

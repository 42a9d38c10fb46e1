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

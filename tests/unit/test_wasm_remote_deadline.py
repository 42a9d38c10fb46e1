"""A remote Wasm module's fetch against hostile servers (worker/wasm/remote.py): http_uri.timeout
bounds the whole try as Envoy's request deadline, not each socket read (a server trickling its
head or body a byte at a time held a try for ever); the whole fetch, retries included, ends
within its budget; a body past MAX_CODE is refused (by its length before it is read)."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time

import pytest

from baton.worker.wasm import remote

SHA = hashlib.sha256(b"module").hexdigest()
TRICKLE_BYTES = 200             # at 20 ms a byte: the server gives up after 4 s


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("BATON_WASM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(remote, "_fetched", {})
    monkeypatch.setattr(remote, "_failed", {})


@contextlib.contextmanager
def server(answer):
    """A listener whose every connection gets answer(conn) after the request is read."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                with contextlib.suppress(OSError):
                    answer(conn, stop)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield remote.Upstream("modules", [listener.getsockname()], None)
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)     # wakes the accept (a close would not)
        listener.close()
        thread.join(10)


def trickle(first: bytes):
    def answer(conn, stop):
        conn.sendall(first)
        for _ in range(TRICKLE_BYTES):
            if stop.wait(0.02):
                return
            conn.sendall(b"x")
    return answer


def timed(call, limit: float):
    """call() in a thread: (its result, seconds), or a failure when it runs past `limit`."""
    done = {}
    start = time.monotonic()
    thread = threading.Thread(target=lambda: done.setdefault("r", call()), daemon=True)
    thread.start()
    thread.join(limit)
    assert "r" in done, f"still running after {limit} s"
    return done["r"], time.monotonic() - start


@pytest.mark.parametrize("first", [
    b"HTTP/1.1 200 OK\r\nX-Slow: ",                                  # the head trickles
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n",          # the body trickles
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",                # read until the close
], ids=["head", "body", "until-close"])
def test_a_trickling_server_costs_the_try_its_timeout(first):
    with server(trickle(first)) as upstream:
        module = remote.Remote("http://modules/m.wasm", SHA, 0.3, upstream=upstream)
        (code, why), seconds = timed(module.try_once, 3)
    assert (code, why) == (None, "timed out (http_uri.timeout)")
    assert 0.25 < seconds < 1.5


def test_the_whole_fetch_ends_within_its_budget_whatever_num_retries_says():
    with server(trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")) as upstream:
        module = remote.Remote("http://modules/m.wasm", SHA, 0.2, retries=1000,
                               base=0.01, ceiling=0.02, upstream=upstream)
        (code, why), seconds = timed(lambda: module.fetch(budget=1.0), 4)
    assert code is None and why.startswith("timed out")
    assert 0.9 < seconds < 1.6
    assert remote._negative(SHA) is not None        # the failure is negatively cached


def test_a_body_past_the_cap_is_refused(monkeypatch):
    monkeypatch.setattr(remote, "MAX_CODE", 1000)
    sent = []

    def said_length(conn, stop):        # refused from its head: none of the body is read
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n")
        sent.append(True)

    def endless(conn, stop):            # chunked without end: read up to the cap only
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(1000):
            conn.sendall(b"100\r\n" + b"x" * 256 + b"\r\n")
    for answer in (said_length, endless):
        with server(answer) as upstream:
            module = remote.Remote("http://modules/m.wasm", SHA, 5, upstream=upstream)
            (code, why), seconds = timed(module.try_once, 5)
        assert (code, why) == (None, "larger than 1000 bytes")
        assert seconds < 2
    assert sent == [True]


def test_an_empty_200_is_a_failed_try():
    """As Envoy's RemoteDataFetcher ("body is empty"), even for the sha256 of nothing."""
    def empty(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    with server(empty) as upstream:
        module = remote.Remote("http://modules/m.wasm", hashlib.sha256(b"").hexdigest(), 5,
                               upstream=upstream)
        assert module.try_once() == (None, "empty body")

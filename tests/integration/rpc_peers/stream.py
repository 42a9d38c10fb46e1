"""A client streaming pipelined RPCs on one long-lived connection, checking every answer:
the reload tests and bench/rpc_bench.py use it.

A sender thread keeps up to `window` requests in flight, each with its own id and an answer
only that id gets (the provider echoes what the request carries, providers.py); every
`slow_every`-th request asks the provider to wait `slow_seconds` (1-3 s by default) first. A receiver thread reads the
answers and files each one under its id. Any surprise (an answer for an id not in flight, a
wrong answer, a second answer, the connection closing) is recorded, never raised in the
thread, for the test to assert on.
"""

from __future__ import annotations

import random
import socket
import threading
import time

from baton.worker.codecs import bolt, dubbo
from baton.worker.codecs.hessian2 import Reader

from .frames import bolt_request, dubbo_request, dubbo_value

SERVICE = "com.example.HelloService"


class RpcStream:
    def __init__(self, kind: str, port: int, *, window: int = 16, slow_every: int = 25,
                 seed: int = 0, first_id: int = 1, slow_seconds: tuple = (1.0, 3.0)):
        self.kind = kind
        self.slow_seconds = slow_seconds
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.decoder = dubbo.Decoder() if kind == "dubbo" else bolt.Decoder()
        self.window = threading.Semaphore(window)
        self.slow_every = slow_every
        self.rand = random.Random(seed)
        self.first_id = self.next_id = first_id
        self.lock = threading.Lock()
        self.expected: dict[int, object] = {}     # id -> the answer it must get
        self.answered = 0
        self.errors: list[str] = []
        self.running = True
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._receive, daemon=True)]

    def start(self) -> "RpcStream":
        for thread in self.threads:
            thread.start()
        return self

    # -- the two threads --------------------------------------------------------------------

    def _request(self, rid: int) -> tuple[bytes, object]:
        slow = self.slow_every and rid % self.slow_every == 0
        delay = f"{self.rand.uniform(*self.slow_seconds):.3f}"
        if self.kind == "dubbo":
            if slow:
                return dubbo_request(rid, SERVICE, "sleep", [delay]), f"P:sleep:{delay}"
            return dubbo_request(rid, SERVICE, "echo", [str(rid)]), f"P:echo:{rid}"
        method = f"sleep{rid}" if slow else f"m{rid}"
        headers = {"delay": delay} if slow else None
        return (bolt_request(rid, f"{SERVICE}:1.0", method, extra_headers=headers),
                f"Q:{method}")

    def _send(self) -> None:
        while self.running:
            if not self.window.acquire(timeout=0.2):
                continue
            rid = self.next_id
            self.next_id += 1
            raw, answer = self._request(rid)
            with self.lock:
                self.expected[rid] = answer
            try:
                self.sock.sendall(raw)
            except OSError as exc:
                self.errors.append(f"send {rid}: {exc}")
                return

    def _value(self, frame):
        if self.kind == "dubbo":
            return dubbo_value(frame) if frame.status == dubbo.OK else f"status {frame.status}"
        if frame.status != bolt.SUCCESS:
            return f"status {frame.status}"
        return Reader(frame.content).read()

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                if self.running or self.pending():
                    self.errors.append(f"receive: {exc}")
                return
            if not data:
                if self.running or self.pending():
                    self.errors.append("the connection closed")
                return
            for frame in self.decoder.feed(data):
                with self.lock:
                    answer = self.expected.pop(frame.request_id, KeyError)
                if answer is KeyError:
                    self.errors.append(f"an answer for id {frame.request_id}, not in flight")
                    continue
                value = self._value(frame)
                if value != answer:
                    self.errors.append(f"id {frame.request_id}: {value!r}, not {answer!r}")
                self.answered += 1
                self.window.release()

    # -- the test's side ---------------------------------------------------------------------

    def pending(self) -> int:
        with self.lock:
            return len(self.expected)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop sending, wait for every answer still owed (at most `timeout` s), close."""
        self.running = False
        self.threads[0].join(timeout)
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline and not self.errors:
            time.sleep(0.05)
        if self.pending():
            self.errors.append(f"{self.pending()} request(s) never answered")
        try:
            self.sock.shutdown(socket.SHUT_RDWR)    # wakes the receiver (close alone does not)
        except OSError:
            pass
        self.threads[1].join(timeout)
        self.sock.close()

    @property
    def sent(self) -> int:
        return self.next_id - self.first_id

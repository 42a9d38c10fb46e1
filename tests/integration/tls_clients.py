"""TLS clients for the integration tests: a paced, echoed stream over Python's `ssl` in one
non-blocking thread (an SSLSocket must not be read and written from two threads at once), a
round trip, a bootstrap for a TLS-terminating tcp_proxy and its listener's ssl.* stats."""

from __future__ import annotations

import hashlib
import selectors
import socket
import ssl
import threading
import time

from .clients import stream_chunks
from .conftest import free_port, tcp_bootstrap

TLS_CONTEXT_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def tls_transport_socket(server, ca=None, *, require_client=False, sans=None, alpn=None,
                         extra_params=None) -> dict:
    """A DownstreamTlsContext transport socket with `server`'s certificate (tests/tls_certs.py)."""
    common = {"tls_certificates": [{"certificate_chain": {"inline_string": server.cert_pem.decode()},
                                    "private_key": {"inline_string": server.key_pem.decode()}}]}
    if ca is not None:
        common["validation_context"] = {"trusted_ca": {"inline_string": ca.cert_pem.decode()}}
        if sans:
            common["validation_context"]["match_typed_subject_alt_names"] = sans
    if alpn:
        common["alpn_protocols"] = alpn
    if extra_params:
        common["tls_params"] = extra_params
    context = {"@type": TLS_CONTEXT_TYPE, "common_tls_context": common}
    if require_client:
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


SSL_SCOPE = "listener.127.0.0.1_{port}.ssl."


def tls_bootstrap(port: int, upstream: int, transport_socket: dict, **kwargs) -> dict:
    data = tcp_bootstrap(free_port(), port, [upstream], **kwargs)
    data["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = transport_socket
    return data


def ssl_stats(b, port: int) -> dict[str, int]:
    scope = SSL_SCOPE.format(port=port)
    return {k[len(scope):]: v for k, v in b.stats().items() if k.startswith(scope)}


def tls_roundtrip(port: int, ctx: ssl.SSLContext, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return echo(tls, payload)


def echo(tls: ssl.SSLSocket, payload: bytes) -> bytes:
    """Send `payload` on an open connection to an echo upstream; what comes back of it."""
    tls.sendall(payload)
    got = b""
    while len(got) < len(payload):
        data = tls.recv(65536)
        if not data:
            break
        got += data
    return got


def client_context(ca, certificate=None, alpn=None, version=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    if certificate is not None:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            ctx.load_cert_chain(*certificate.write(tmp, "client"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


class TlsEchoStream:
    """One TLS connection through an echo upstream: sends a deterministic byte stream at
    `rate` bytes/s (bounded by `limit` bytes) and reads the echo, until `finish()`; then
    every byte sent must have come back, in order."""

    def __init__(self, port: int, context: ssl.SSLContext, rate: float, limit: int = 256 << 20,
                 seed: int = 1, server_hostname: str = "localhost", key_update_every: int = 0):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=server_hostname)
        self.sock.setblocking(False)
        self.rate, self.limit = rate, limit
        self.chunks = stream_chunks(limit, seed, chunk=16384)
        self.pending = b""
        self.sent = self.got = 0
        self.sent_hash, self.got_hash = hashlib.sha256(), hashlib.sha256()
        self.error: str | None = None
        # TLS 1.3: ask for a KeyUpdate (and get the server's) every this many bytes sent.
        self.key_update_every, self.key_updates = key_update_every, 0
        self.stopping = threading.Event()
        self.reading = threading.Event()    # cleared: the client stops reading (backpressure)
        self.reading.set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "TlsEchoStream":
        self.thread.start()
        return self

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        started = time.monotonic()
        try:
            while True:
                if not self.stopping.is_set():
                    allowed = min(self.limit, int((time.monotonic() - started) * self.rate) + 16384)
                    while self.sent < allowed:
                        if not self.pending:
                            self.pending = bytes(next(self.chunks, b""))
                            if not self.pending:
                                break           # `limit` bytes sent
                        try:
                            n = self.sock.send(self.pending)
                        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                            break
                        self.sent_hash.update(self.pending[:n])
                        self.pending = self.pending[n:]
                        self.sent += n
                        if self.key_update_every and self.sent // self.key_update_every > self.key_updates:
                            from ..tls_helpers import openssl_key_update
                            openssl_key_update(self.sock, request_peer=True)
                            self.key_updates += 1
                elif self.got >= self.sent:
                    return
                if not self.reading.is_set():
                    self.reading.wait(0.005)
                    continue
                sel.select(0.005)
                while True:
                    try:
                        data = self.sock.recv(1 << 18)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                        break
                    if not data:
                        self.error = f"EOF after {self.got} of {self.sent} bytes"
                        return
                    self.got_hash.update(data)
                    self.got += len(data)
        except (OSError, ssl.SSLError) as exc:
            self.error = f"{type(exc).__name__}: {exc} after {self.got} of {self.sent} bytes"
        finally:
            sel.close()

    def finish(self, timeout: float = 30.0) -> None:
        """Stop sending, wait for the echo of everything sent, and check it."""
        self.stopping.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"echo incomplete: {self.got} of {self.sent} bytes"
        assert self.error is None, self.error
        assert self.got == self.sent and self.got_hash.hexdigest() == self.sent_hash.hexdigest()
        self.sock.close()

"""TLS test plumbing over real OpenSSL: contexts from tests/tls_certs.py, an in-memory
handshake between a Python `ssl` client and Baton's TlsHandshake, and pinning one TLS 1.3
cipher suite.

Python's `ssl` has no SSL_CTX_set_ciphersuites (set_ciphers only governs TLS 1.2), so
`pin_tls13_suite` calls it through ctypes on the context's SSL_CTX pointer, which CPython
keeps right after the object header of an SSLContext (Modules/_ssl.c, PySSLContext). Tests
only; the same libssl that `_ssl` links is the one called.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
import tempfile

from baton.worker.tls.handover import TlsHandshake
from baton.worker.tls.keylog import KeyLog
from baton.worker.tls.suites import TLS12_CIPHERS

from .tls_certs import leaf, make_ca

TLS13 = ssl.TLSVersion.TLSv1_3
TLS12 = ssl.TLSVersion.TLSv1_2

_libssl = ctypes.CDLL("libssl.so.3")
_libssl.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_libssl.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
_libssl.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
_libssl.SSL_key_update.restype = ctypes.c_int
_HEAD = sys.getsizeof(object())          # PyObject_HEAD: refcount and type pointer


def pin_tls13_suite(context: ssl.SSLContext, suite: str) -> None:
    ssl_ctx = ctypes.c_void_p.from_address(id(context) + _HEAD).value
    if not _libssl.SSL_CTX_set_ciphersuites(ssl_ctx, suite.encode()):
        raise ValueError(f"OpenSSL refused TLS 1.3 suite {suite}")
    offered = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.3"]
    if offered != [suite]:
        raise AssertionError(f"pinning {suite} did not take (the context offers {offered})")


def openssl_key_update(sslobj: ssl.SSLObject, request_peer: bool) -> None:
    """SSL_key_update on an SSLObject (the next write sends it). CPython's _ssl._SSLSocket keeps
    its SSL* after the object header and the Socket reference (Modules/_ssl.c, PySSLSocket)."""
    ssl_ptr = ctypes.c_void_p.from_address(id(sslobj._sslobj) + _HEAD + ctypes.sizeof(ctypes.c_void_p)).value
    if not _libssl.SSL_key_update(ssl_ptr, 1 if request_peer else 0):
        raise ValueError("SSL_key_update refused")


def _load_pair(ctx: ssl.SSLContext, pair) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ctx.load_cert_chain(*pair.write(tmp, "pair"))


def server_context(kind: str, version=TLS13, suite: str | None = None, ca_kind: str = "ecdsa",
                   require_client: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_pair(ctx, leaf(make_ca(ca_kind), kind))
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=make_ca(ca_kind).cert_pem.decode())
    ctx.minimum_version = ctx.maximum_version = version
    if version == TLS12:
        ctx.set_ciphers(suite or TLS12_CIPHERS)
    elif suite:
        pin_tls13_suite(ctx, suite)
    return ctx


def client_context(version=TLS13, suite: str | None = None, ca_kind: str = "ecdsa",
                   certificate=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if certificate is not None:
        _load_pair(ctx, certificate)
    ctx.load_verify_locations(cadata=make_ca(ca_kind).cert_pem.decode())
    ctx.minimum_version = ctx.maximum_version = version
    if version == TLS12:
        ctx.set_ciphers(suite or TLS12_CIPHERS)
    elif suite:
        pin_tls13_suite(ctx, suite)
    return ctx


class MemoryPeer:
    """A Python ssl endpoint over MemoryBIOs: `feed` what the other side sent, `take` its output."""

    def __init__(self, context: ssl.SSLContext, server_side: bool = False,
                 server_hostname: str | None = "localhost", session: ssl.SSLSession | None = None) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                    server_hostname=None if server_side else server_hostname,
                                    session=session)

    def feed(self, data: bytes) -> None:
        self.incoming.write(data)

    def take(self) -> bytes:
        return self.outgoing.read()

    def read_all(self) -> bytes:
        """Every byte of application data the fed records hold."""
        out = bytearray()
        while True:
            try:
                chunk = self.obj.read(1 << 20)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk


def handshake(hs: TlsHandshake, peer: MemoryPeer, baton_first: bool = False, rounds: int = 10):
    """Pump bytes between Baton's TlsHandshake and a MemoryPeer until both are done."""
    peer_done = False
    if baton_first:
        peer.feed(hs.step())
    for _ in range(rounds):
        if not peer_done:
            try:
                peer.obj.do_handshake()
                peer_done = True
            except ssl.SSLWantReadError:
                pass
        hs.receive_data(peer.take())
        peer.feed(hs.step())
        if peer_done and hs.done:
            return
    raise AssertionError("handshake did not finish")


def baton_server(kind: str = "ecdsa", version=TLS13, suite: str | None = None, client_certificate=None):
    """(Baton's server-side TlsHandshake, its KeyLog, a Python client MemoryPeer), handshaken;
    with `client_certificate`, mutual TLS."""
    server_ctx = server_context(kind, version, suite, require_client=client_certificate is not None)
    keylog = KeyLog(server_ctx)
    hs = TlsHandshake(server_ctx, keylog, server_side=True)
    peer = MemoryPeer(client_context(version, suite, certificate=client_certificate))
    handshake(hs, peer)
    return hs, keylog, peer


def baton_client(kind: str = "ecdsa", version=TLS13, suite: str | None = None):
    """(Baton's client-side TlsHandshake, its KeyLog, a Python server MemoryPeer), handshaken."""
    client_ctx = client_context(version, suite)
    keylog = KeyLog(client_ctx)
    hs = TlsHandshake(client_ctx, keylog, server_side=False, server_hostname="localhost")
    peer = MemoryPeer(server_context(kind, version, suite), server_side=True)
    handshake(hs, peer, baton_first=True)
    return hs, keylog, peer


def layer_pair(suite_name: str, seed: bytes = b"baton"):
    """(server layer, client layer) of one session keyed from `seed`, no handshake: for
    property tests and fuzzing, where only the record layer is under test."""
    import hashlib

    from baton.worker.tls.layer import RecordLayer, protections
    from baton.worker.tls.suites import suite_named

    suite = suite_named(suite_name)
    digest = lambda label: hashlib.sha512(seed + label).digest()   # noqa: E731
    if suite.version == "TLSv1.3":
        size = hashlib.new(suite.hash_name).digest_size
        c = {"secret": digest(b"c")[:size], "seq": 0}
        s = {"secret": digest(b"s")[:size], "seq": 0}
    else:
        k, v = suite.key_length, suite.fixed_iv_length
        c = {"key": digest(b"ck")[:k], "iv": digest(b"ci")[:v], "seq": 0}
        s = {"key": digest(b"sk")[:k], "iv": digest(b"si")[:v], "seq": 0}
    server = RecordLayer(suite, "server", *protections(suite, c, s))
    client = RecordLayer(suite, "client", *protections(suite, s, c))
    return server, client

"""Baton's record layer against OpenSSL on the same sessions (worker/tls/).

OpenSSL (Python's ssl, SSLObject over MemoryBIOs) does each handshake; Baton's layer is built
from what the handover captured. The SSLObject that did the server's (or client's) handshake
stays alive as a twin, so the same plaintext goes through both and the ciphertext must be
byte-identical — which also proves the sequence numbers, nonces and keys at the handover
point. Ciphertext from the real Python ssl peer must give Baton the same plaintext, KeyUpdates
from either side included. TLS 1.3 with its three AEAD suites, TLS 1.2 ECDHE-ECDSA/RSA with
AES-GCM and ChaCha20; RSA 2048 and ECDSA P-256 certificates made at test time.
"""

from __future__ import annotations

import ssl

import pytest

from baton.worker.tls.records import (
    BAD_RECORD_MAC, DECODE_ERROR, PROTOCOL_VERSION, RECORD_OVERFLOW, UNEXPECTED_MESSAGE, TLSAlert,
    alert_name, pack_header,
)

from ..tls_helpers import TLS12, TLS13, baton_client, baton_server, openssl_key_update

TLS13_CASES = [(kind, suite) for suite in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                           "TLS_CHACHA20_POLY1305_SHA256") for kind in ("ecdsa", "rsa")]
TLS12_CASES = [(kind, f"ECDHE-{'ECDSA' if kind == 'ecdsa' else 'RSA'}-{cipher}")
               for kind in ("ecdsa", "rsa")
               for cipher in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305")]
CASES = ([pytest.param(TLS13, k, s, id=f"1.3-{k}-{s}") for k, s in TLS13_CASES]
         + [pytest.param(TLS12, k, s, id=f"1.2-{s}") for k, s in TLS12_CASES])

SIZES = [1, 100, 16383, 16384, 16385, 70000]


def payload(size: int, salt: int) -> bytes:
    return bytes((i * 7 + salt) & 0xFF for i in range(size))


class Twin:
    """The OpenSSL SSLObject that did Baton's handshake, kept in step with Baton's layer."""

    def __init__(self, hs) -> None:
        self.obj = hs.ssl_object
        self.incoming, self.outgoing = hs._incoming, hs._outgoing

    def write(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.outgoing.read()

    def read(self, data: bytes) -> bytes:
        self.incoming.write(data)
        out = bytearray()
        while True:
            try:
                out += self.obj.read(1 << 20)
            except ssl.SSLWantReadError:
                return bytes(out)


def exchange(layer, twin: Twin, peer, salt: int) -> None:
    """Both directions, every size: identical ciphertext out, identical plaintext in."""
    for size in SIZES:
        data = payload(size, salt)
        wire = layer.send_data(data)
        assert wire == twin.write(data), f"ciphertext differs from OpenSSL's at {size} bytes"
        peer.feed(wire)
        assert peer.read_all() == data
        peer.obj.write(data)
        incoming = peer.take()
        assert layer.receive_data(incoming) == data
        assert twin.read(incoming) == data


@pytest.mark.parametrize("version, kind, suite", CASES)
def test_server_records_match_openssl(version, kind, suite):
    hs, keylog, peer = baton_server(kind, version, suite)
    layer = hs.handover()
    twin = Twin(hs)
    assert layer.suite.name == suite == hs.ssl_object.cipher()[0]
    if version == TLS13:
        assert layer.write.seq >= 1            # OpenSSL's NewSessionTickets, under the app key
    else:
        assert (layer.read.seq, layer.write.seq) == (1, 1)    # Finished was seq 0
    exchange(layer, twin, peer, salt=1)

    if version == TLS13:
        # Baton asks for a KeyUpdate; the twin, asked the same through SSL_key_update, must
        # write the same bytes. The client answers with its own on its next write.
        openssl_key_update(twin.obj, request_peer=True)
        data = payload(5000, 2)
        wire = layer.update_keys() + layer.send_data(data)
        assert wire == twin.write(data)
        peer.feed(wire)
        assert peer.read_all() == data
        exchange(layer, twin, peer, salt=3)
        assert layer.key_updates_received == 1

        # The client asks: Baton queues its answer before its next data, as OpenSSL does.
        openssl_key_update(peer.obj, request_peer=True)
        peer.obj.write(b"ping")
        incoming = peer.take()
        assert layer.receive_data(incoming) == b"ping" == twin.read(incoming)
        wire = layer.send_data(b"pong")
        assert wire == twin.write(b"pong")
        peer.feed(wire)
        assert peer.read_all() == b"pong"
        exchange(layer, twin, peer, salt=4)
        assert layer.key_updates_received == 2

        # Asked, and asking at once: one KeyUpdate answers and asks, as OpenSSL's does.
        openssl_key_update(peer.obj, request_peer=True)
        peer.obj.write(b"ask")
        incoming = peer.take()
        assert layer.receive_data(incoming) == b"ask" == twin.read(incoming)
        openssl_key_update(twin.obj, request_peer=True)
        wire = layer.update_keys(request_peer=True) + layer.send_data(b"both")
        assert wire == twin.write(b"both")
        peer.feed(wire)
        assert peer.read_all() == b"both"
        exchange(layer, twin, peer, salt=6)

    # close_notify both ways; OpenSSL's SSL_shutdown writes the same record
    wire = layer.close()
    with pytest.raises(ssl.SSLWantReadError):
        twin.obj.unwrap()
    assert wire == twin.outgoing.read()
    peer.feed(wire)
    assert peer.obj.read(10) == b""             # SSLObject's end of stream: close_notify
    try:
        peer.obj.unwrap()
    except ssl.SSLWantReadError:
        pass
    assert layer.receive_data(peer.take()) == b""
    assert layer.peer_closed
    keylog.close()


@pytest.mark.parametrize("version, kind, suite", CASES[::2])
def test_client_records_match_openssl(version, kind, suite):
    """Baton as the client: the server's NewSessionTickets (TLS 1.3) are tolerated and counted."""
    hs, keylog, peer = baton_client(kind, version, suite)
    layer = hs.handover()
    twin = Twin(hs)
    twin.incoming.write(layer.pending_in())     # handover took them out of the twin's BIO
    assert layer.receive_data(b"") == b""
    assert twin.read(b"") == b""
    if version == TLS13:
        assert layer.tickets_received >= 1
    exchange(layer, twin, peer, salt=5)
    keylog.close()


GARBLE = {
    "oversized": (lambda layer, wire: pack_header(23, 2 ** 14 + 2049) + b"\0" * 10, RECORD_OVERFLOW),
    "flipped_bit": (lambda layer, wire: wire[:-1] + bytes((wire[-1] ^ 1,)), BAD_RECORD_MAC),
    "unknown_type": (lambda layer, wire: b"\x30" + wire[1:], None),
    "short": (lambda layer, wire: pack_header(23, 3) + b"abc", BAD_RECORD_MAC),
    "handshake_type": (lambda layer, wire: b"\x16" + wire[1:], None),
    "minor_version": (lambda layer, wire: wire[:1] + b"\x03\x01" + wire[3:], None),
    "major_version": (lambda layer, wire: wire[:1] + b"\x05\x03" + wire[3:], PROTOCOL_VERSION),
    "header_only": (lambda layer, wire: wire[:1] + b"\x03\x01" + wire[3:5], None),
}
# Where the alert depends on the version (None above): what OpenSSL 3.0 sends, and so Baton.
BY_VERSION = {
    "handshake_type": {TLS13: UNEXPECTED_MESSAGE, TLS12: BAD_RECORD_MAC},   # 1.2: type is in the AAD
    "minor_version": {TLS13: DECODE_ERROR, TLS12: PROTOCOL_VERSION},
    "header_only": {TLS13: DECODE_ERROR, TLS12: PROTOCOL_VERSION},          # before the body arrives
    "unknown_type": {TLS13: UNEXPECTED_MESSAGE, TLS12: BAD_RECORD_MAC},
}


# The one place Baton does not follow OpenSSL 3.0: a TLS 1.2 record too short for its AEAD
# cannot authenticate, so bad_record_mac (RFC 5246 §6.2.3.3); OpenSSL says internal_error.
OPENSSL_DIFFERS = {(TLS12, "short"): "TLSV1_ALERT_INTERNAL_ERROR"}


@pytest.mark.parametrize("name", sorted(GARBLE))
@pytest.mark.parametrize("version, suite", [(TLS13, "TLS_AES_128_GCM_SHA256"),
                                            (TLS12, "ECDHE-ECDSA-AES128-GCM-SHA256")])
def test_bad_records_get_openssls_alert(version, suite, name):
    """The same garbled record to OpenSSL and to Baton: the same alert, byte for byte."""
    garble, expected = GARBLE[name]
    expected = expected if expected is not None else BY_VERSION[name][version]
    hs, keylog, peer = baton_server("ecdsa", version, suite)
    layer = hs.handover()
    twin = Twin(hs)
    peer.obj.write(b"x" * 40)
    bad = garble(layer, peer.take())
    with pytest.raises(TLSAlert) as caught:
        layer.receive_data(bad)
    assert caught.value.description == expected, alert_name(caught.value.description)
    with pytest.raises(ssl.SSLError):
        twin.read(bad)
    if (version, name) in OPENSSL_DIFFERS:
        peer.feed(twin.outgoing.read())
        with pytest.raises(ssl.SSLError) as seen:
            peer.read_all()
        assert seen.value.reason == OPENSSL_DIFFERS[version, name]
    else:
        assert layer.data_to_send() == twin.outgoing.read()
    with pytest.raises(TLSAlert):                 # the layer stays dead
        layer.receive_data(b"")
    keylog.close()


@pytest.mark.parametrize("version", [TLS13, TLS12], ids=["1.3", "1.2"])
def test_mutual_tls_with_spiffe_identity(version):
    """A workload certificate (SPIFFE URI SAN, no DNS name) from the client: the handover
    keeps it as a handshake fact, and the session carries on under Baton's layer."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from ..tls_certs import SPIFFE_ID, spiffe_leaf, make_ca

    workload = spiffe_leaf(make_ca("ecdsa"), "ecdsa")
    hs, keylog, peer = baton_server("ecdsa", version, client_certificate=workload)
    layer = hs.handover()
    der = layer.info["peer_certificate"]
    assert der == workload.cert.public_bytes(serialization.Encoding.DER)
    sans = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE_ID]
    peer.obj.write(b"hello from the workload")
    assert layer.receive_data(peer.take()) == b"hello from the workload"
    keylog.close()


@pytest.mark.parametrize("version", [TLS13, TLS12], ids=["1.3", "1.2"])
def test_data_right_behind_the_clients_finished_is_handed_over(version):
    """The client's first request often shares a segment with its Finished: OpenSSL stops at
    the end of Finished, and the rest reaches Baton's layer as unprocessed ciphertext."""
    from baton.worker.tls.handover import TlsHandshake
    from baton.worker.tls.keylog import KeyLog

    from ..tls_helpers import MemoryPeer, client_context, server_context

    server_ctx = server_context("ecdsa", version)
    keylog = KeyLog(server_ctx)
    hs = TlsHandshake(server_ctx, keylog, server_side=True)
    peer = MemoryPeer(client_context(version))
    for _ in range(10):
        try:
            peer.obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            hs.receive_data(peer.take())
            peer.feed(hs.step())
    peer.obj.write(b"GET / HTTP/1.1\r\n\r\n")
    hs.receive_data(peer.take())                 # Finished and the request, in one piece
    peer.feed(hs.step())
    assert hs.done
    layer = hs.handover()
    assert layer.pending_in()
    assert layer.receive_data(b"") == b"GET / HTTP/1.1\r\n\r\n"
    peer.feed(layer.send_data(b"HTTP/1.1 200 OK\r\n\r\n"))
    assert peer.read_all() == b"HTTP/1.1 200 OK\r\n\r\n"
    keylog.close()


def test_mutated_streams_get_openssls_verdict():
    """The fuzzer's mutations of real client streams (data, KeyUpdates both kinds), fed to
    Baton's layer and to its OpenSSL twin: the same plaintext when both accept, and the same
    alert record, byte for byte, when they refuse (OPENSSL_DIFFERS aside)."""
    import importlib.util
    import random
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "fuzz_tls_record", Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_tls_record.py")
    fuzzer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzzer)

    class Stream:
        wire = b""

    rng = random.Random(1207)
    verdicts = set()
    for _ in range(120):
        version, suite = rng.choice([(TLS13, "TLS_AES_128_GCM_SHA256"), (TLS13, "TLS_CHACHA20_POLY1305_SHA256"),
                                     (TLS12, "ECDHE-ECDSA-AES128-GCM-SHA256"),
                                     (TLS12, "ECDHE-ECDSA-CHACHA20-POLY1305")])
        hs, keylog, peer = baton_server("ecdsa", version, suite)
        layer, twin = hs.handover(), Twin(hs)
        stream = Stream()
        for _ in range(rng.randrange(1, 4)):
            if version == TLS13 and rng.random() < 0.3:
                openssl_key_update(peer.obj, request_peer=rng.random() < 0.5)
            peer.obj.write(rng.randbytes(rng.choice((1, 100, 20000))))
            stream.wire += peer.take()
        data = fuzzer.mutate(rng, stream, [stream])
        try:
            baton_plain, baton_error = layer.receive_data(data), None
        except TLSAlert as exc:
            baton_plain, baton_error = exc.data, exc
        try:
            openssl_plain, openssl_failed = twin.read(data), False
        except ssl.SSLError:
            openssl_plain, openssl_failed = None, True
        verdicts.add(alert_name(baton_error.description) if baton_error else "ok")
        if baton_error is None:
            assert not openssl_failed and baton_plain == openssl_plain
            assert layer.send_data(b"z") == twin.write(b"z")      # KeyUpdate answers first
        elif "shorter than its AEAD overhead" in str(baton_error) and version == TLS12:
            peer.feed(twin.outgoing.read())
            with pytest.raises(ssl.SSLError) as seen:
                peer.read_all()
            assert seen.value.reason == OPENSSL_DIFFERS[TLS12, "short"]
        else:
            assert openssl_failed, baton_error
            assert layer.data_to_send() == twin.outgoing.read(), baton_error
        keylog.close()
    assert {"ok", "bad_record_mac", "unexpected_message", "protocol_version"} <= verdicts

"""Session resumption across TlsServers built from one spec, as every worker builds its own
(worker/tls/tickets.py, openssl.py): configured ticket keys, Baton's own keys from the
lineage's seed (shared by workers, handed to the next generation), the session id context
that keeps a ticket on the chain that issued it, and Envoy's disable_* switches."""

from __future__ import annotations

import ssl

import pytest

from baton.worker.stats import Stats
from baton.worker.tls import openssl, tickets
from baton.worker.tls.accept import ServerAccept
from baton.worker.tls.server import TlsServer

from ..tls_certs import leaf, make_ca, spiffe_leaf
from ..tls_helpers import TLS12, TLS13, MemoryPeer
from .test_tls_server import client, spec

VERSIONS = pytest.mark.parametrize("version", [TLS13, TLS12], ids=["1.3", "1.2"])
KEY_A, KEY_B = bytes(range(80)), bytes(range(100, 180))


@pytest.fixture(scope="module")
def ca():
    return make_ca("ecdsa")


@pytest.fixture(scope="module")
def pair(ca):
    return leaf(ca, "ecdsa")


def accepted(server: TlsServer, peer: MemoryPeer):
    """The worker's path (accept.py) to the record layer: (layer, whether it resumed)."""
    accept = ServerAccept(server)
    for _ in range(10):
        try:
            peer.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        peer.feed(accept.receive(peer.take(), False))
        if accept.layer is not None:
            peer.obj.do_handshake()
            reused = accept.handshake.ssl_object.session_reused
            assert peer.obj.session_reused == reused
            return accept.layer, reused
    raise AssertionError("handshake did not finish")


def first_session(server: TlsServer, ca, version):
    """A full handshake on `server`; the client's session once its tickets have arrived."""
    peer = client(ca, version=version)
    layer, reused = accepted(server, peer)
    assert not reused
    peer.feed(layer.send_data(b"tickets come before this"))
    assert peer.read_all() == b"tickets come before this"
    return peer.obj.session, peer.obj.context


def resumes(server: TlsServer, session, client_ctx) -> bool:
    """Whether a client offering `session` resumes it on `server`."""
    return accepted(server, MemoryPeer(client_ctx, session=session))[1]


def test_this_python_reaches_openssl():
    assert openssl.unavailable() is None


@VERSIONS
def test_a_session_resumes_on_another_worker_with_baton_keys(ca, pair, version):
    worker_a, worker_b = TlsServer(spec(pair)), TlsServer(spec(pair))
    session, ctx = first_session(worker_a, ca, version)
    assert resumes(worker_b, session, ctx)


@VERSIONS
def test_the_next_generation_resumes_with_the_seed_it_was_handed(ca, pair, version):
    before = tickets.seed()
    try:
        session, ctx = first_session(TlsServer(spec(pair)), ca, version)
        tickets.adopt_seed(before)                      # the reload's `sockets` message
        assert resumes(TlsServer(spec(pair)), session, ctx)
        tickets.adopt_seed(None)                        # a fresh start: new keys
        assert not resumes(TlsServer(spec(pair)), session, ctx)
    finally:
        tickets.adopt_seed(before)


@VERSIONS
def test_configured_keys_first_encrypts_all_decrypt(ca, pair, version):
    old = TlsServer(spec(pair, session_ticket_keys=[KEY_A]))
    session, ctx = first_session(old, ca, version)
    rotated = TlsServer(spec(pair, session_ticket_keys=[KEY_B, KEY_A]))
    assert resumes(rotated, session, ctx)               # KEY_A still decrypts
    assert not resumes(TlsServer(spec(pair, session_ticket_keys=[KEY_B])), session, ctx)
    session, ctx = first_session(rotated, ca, version)  # issued under KEY_B
    assert resumes(TlsServer(spec(pair, session_ticket_keys=[KEY_B])), session, ctx)
    assert not resumes(old, session, ctx)


def test_a_ticket_does_not_resume_on_a_chain_that_checks_clients_differently(ca, pair):
    keys = {"session_ticket_keys": [KEY_A]}
    session, ctx = first_session(TlsServer(spec(pair, **keys)), ca, TLS13)
    other_ca = make_ca("ecdsa")
    stricter = TlsServer(spec(pair, other_ca, **keys))
    assert tickets.session_id_context(stricter.spec) != tickets.session_id_context(spec(pair, **keys))
    assert not resumes(stricter, session, ctx)


@VERSIONS
def test_disable_both_means_no_resumption(ca, pair, version):
    off = TlsServer(spec(pair, disable_stateless_session_resumption=True,
                         disable_stateful_session_resumption=True))
    session, ctx = first_session(off, ca, version)
    assert not resumes(off, session, ctx)


def test_without_tickets_tls12_resumes_by_session_id_on_the_same_worker(ca, pair):
    stateful = TlsServer(spec(pair, disable_stateless_session_resumption=True))
    session, ctx = first_session(stateful, ca, TLS12)
    assert not session.has_ticket
    assert resumes(stateful, session, ctx)
    # The session cache is the process's own: another worker does not know the id.
    assert not resumes(TlsServer(spec(pair, disable_stateless_session_resumption=True)), session, ctx)


@VERSIONS
def test_session_reused_curves_and_sigalgs_are_counted(ca, version):
    server = TlsServer(spec(leaf(ca, "ecdsa"), ca, require=True))
    stats = Stats()
    server.declare_stats("listener.x.", stats)
    peer = client(ca, spiffe_leaf(ca), version=version)
    layer, _ = accepted(server, peer)                   # counts, as a worker does
    assert stats.counters["listener.x.ssl.curves.X25519"] == 1
    assert stats.counters["listener.x.ssl.sigalgs.ecdsa_secp256r1_sha256"] == 1
    peer.feed(layer.send_data(b"x"))
    peer.read_all()
    assert accepted(server, MemoryPeer(peer.obj.context, session=peer.obj.session))[1]
    assert stats.counters["listener.x.ssl.session_reused"] == 1
    assert stats.counters["listener.x.ssl.handshake"] == 2


def test_where_openssl_is_unreachable_it_is_said_and_nothing_crashes(ca, pair, monkeypatch, caplog):
    """A Python whose objects do not hold the pointers where CPython 3.11 keeps them: configured
    keys are a config error naming why, Baton's own keys a warning, the counters skip curves."""
    from baton.xds.tls import translate_ticket_keys
    from baton.xds import protos
    monkeypatch.setattr(openssl, "_why_not", "the SSL_CTX pointer is not where CPython kept it")
    monkeypatch.setattr(openssl, "_checked", True)
    protos.import_type("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")
    keys_pb = protos.message_class("envoy.extensions.transport_sockets.tls.v3.TlsSessionTicketKeys")()
    keys_pb.keys.add().inline_bytes = KEY_A
    errors = []
    assert translate_ticket_keys(keys_pb, "ctx.session_ticket_keys", errors) is None
    assert errors == ["ctx.session_ticket_keys: cannot be set on this Python: "
                      "the SSL_CTX pointer is not where CPython kept it"]
    with caplog.at_level("WARNING"):
        server = TlsServer(spec(pair))
    assert "resume only on the worker that issued them" in caplog.text
    stats = Stats()
    server.declare_stats("listener.x.", stats)
    peer = client(ca)
    layer, _ = accepted(server, peer)
    assert stats.counters["listener.x.ssl.handshake"] == 1
    assert not [k for k in stats.counters if ".curves." in k or ".sigalgs." in k]
    peer.feed(layer.send_data(b"still served"))
    assert peer.read_all() == b"still served"


@pytest.mark.parametrize("first", ["data", "close_notify"])
def test_tickets_leave_with_the_servers_first_record(ca, pair, first):
    """As Envoy (BoringSSL) does (checked against Envoy 1.40 with openssl s_client -msg): a TLS
    1.3 server's NewSessionTickets leave in front of its first record, data or close_notify,
    not on their own when the handshake ends."""
    peer = client(ca, version=TLS13)
    accept = ServerAccept(TlsServer(spec(pair)))
    last = None
    for _ in range(10):
        try:
            peer.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        last = accept.receive(peer.take(), False)
        peer.feed(last)
        if accept.layer is not None:
            break
    layer = accept.layer
    assert last == b""                      # the step that finished had only the tickets
    assert layer.data_to_send() == b""      # and they wait for a record of the layer's own
    assert not peer.obj.session.has_ticket
    wire = layer.send_data(b"first") if first == "data" else layer.close()
    peer.feed(wire)
    assert peer.read_all() == (b"first" if first == "data" else b"")
    assert peer.obj.session.has_ticket
    assert layer.write.seq == 3             # 2 tickets, then ours

"""worker/tls/state.py: a record layer's state as a plain versioned dict, through msgpack,
continuing the session in another layer object exactly where the first one stopped (the
process boundary itself is crossed in test_tls_movement.py); and worker/tls/ktls.py."""

from __future__ import annotations

import msgpack
import pytest

from baton.worker.tls.ktls import ktls_available, ktls_status
from baton.worker.tls.state import STATE_VERSION, StateError, export_state, import_state

from ..tls_helpers import TLS13, baton_server, layer_pair

SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
          "ECDHE-ECDSA-CHACHA20-POLY1305"]


def through_msgpack(state: dict) -> dict:
    return msgpack.unpackb(msgpack.packb(state, use_bin_type=True), raw=False)


@pytest.mark.parametrize("suite", SUITES)
def test_round_trip_continues_mid_stream(suite):
    server, client = layer_pair(suite)
    wire = client.send_data(b"a" * 40000)
    if client.tls13:
        wire += client.update_keys(request_peer=True)
    wire += client.send_data(b"b" * 100)
    cut = len(wire) - 37                     # the mover holds part of the last record
    assert server.receive_data(wire[:cut]).startswith(b"a")
    state = through_msgpack(export_state(server))
    assert state["v"] == STATE_VERSION
    assert state["pending_in"] == wire[cut - len(state["pending_in"]):cut]

    moved = import_state(state)
    assert export_state(moved) == state
    assert moved.receive_data(wire[cut:]) == b"b" * 100
    reply = moved.send_data(b"from the new process")
    assert client.receive_data(reply) == b"from the new process"


def test_round_trip_after_a_real_handshake_keeps_handshake_facts():
    hs, keylog, peer = baton_server("ecdsa", TLS13)
    layer = hs.handover()
    state = through_msgpack(export_state(layer))
    assert state["info"]["peer_certificate"] is None
    moved = import_state(state)
    peer.feed(moved.send_data(b"hello"))
    assert peer.read_all() == b"hello"
    keylog.close()


def test_pending_output_moves_too():
    server, client = layer_pair("TLS_AES_256_GCM_SHA384")
    server.receive_data(client.update_keys(request_peer=True))   # the answer is queued
    moved = import_state(through_msgpack(export_state(server)))
    assert client.receive_data(moved.send_data(b"x")) == b"x"   # the owed answer moved too
    assert client.key_updates_received == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.update(v=99), "TLS state version 99"),
    (lambda s: s.pop("suite"), "suite must be str"),
    (lambda s: s.update(suite="RC4-MD5"), "cannot be handed over"),
    (lambda s: s["read"].pop("secret"), "read.secret must be bytes"),
    (lambda s: s["write"].update(seq=-1), "write.seq out of range"),
    (lambda s: s["write"].update(seq=True), "write.seq must be int"),
    (lambda s: s.update(role="middle"), "role must be"),
])
def test_bad_state_is_a_clear_error(mutate, message):
    server, _client = layer_pair("TLS_AES_128_GCM_SHA256")
    state = export_state(server)
    mutate(state)
    with pytest.raises(StateError, match=message):
        import_state(state)


def test_wrong_key_size_is_a_clear_error():
    server, _client = layer_pair("ECDHE-RSA-AES128-GCM-SHA256")
    state = export_state(server)
    state["read"]["key"] = b"short"
    with pytest.raises(StateError, match="16-byte key"):
        import_state(state)


def test_a_failed_session_cannot_move():
    server, _client = layer_pair("TLS_AES_128_GCM_SHA256")
    with pytest.raises(Exception):
        server.receive_data(b"\x17\x03\x03\x00\x20" + b"\0" * 32)
    with pytest.raises(StateError, match="cannot move"):
        export_state(server)


def test_ktls_is_detected_not_assumed(tmp_path):
    with_tls = tmp_path / "ulp"
    with_tls.write_text("mptcp tls\n")
    without = tmp_path / "ulp2"
    without.write_text("mptcp\n")
    assert ktls_available(str(with_tls)) and not ktls_available(str(without))
    assert not ktls_available(str(tmp_path / "missing"))
    assert "unavailable (ULPs offered: mptcp)" in ktls_status(str(without))
    assert ktls_status().startswith(("kTLS available", "kTLS unavailable"))


def test_client_side_session_moves_with_unread_tickets():
    """Baton as the TLS client (upstream TLS later): the server's NewSessionTickets are still
    unread ciphertext at the handover; they move with the state and are taken after it."""
    from ..tls_helpers import baton_client

    hs, keylog, server = baton_client("rsa", TLS13)
    layer = hs.handover()
    assert layer.pending_in()                     # the tickets, not processed yet
    moved = import_state(through_msgpack(export_state(layer)))
    server.feed(moved.send_data(b"GET / HTTP/1.1\r\n\r\n"))
    assert server.read_all() == b"GET / HTTP/1.1\r\n\r\n"
    server.obj.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert moved.receive_data(server.take()) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert moved.tickets_received >= 1
    keylog.close()

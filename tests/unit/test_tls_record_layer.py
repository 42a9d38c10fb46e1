"""worker/tls/layer.py: the record layer's rules, one by one, and Hypothesis properties
(split invariance of the record parser; garbage never raises anything but TLSAlert)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.worker.tls import layer as layer_mod
from baton.worker.tls.records import (
    ALERT, APPLICATION_DATA, BAD_RECORD_MAC, CHANGE_CIPHER_SPEC, DECODE_ERROR, HANDSHAKE,
    ILLEGAL_PARAMETER, MAX_PLAINTEXT, NO_RENEGOTIATION, PROTOCOL_VERSION, RECORD_OVERFLOW,
    UNEXPECTED_MESSAGE, TLSAlert, pack_header, split_records,
)

from ..tls_helpers import layer_pair

TLS13_SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
TLS12_SUITES = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"]
ALL_SUITES = TLS13_SUITES + TLS12_SUITES

PROPERTY = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

KEY_UPDATE = lambda requested: bytes((24, 0, 0, 1, 1 if requested else 0))   # noqa: E731


def alert_from(layer, data: bytes) -> TLSAlert:
    with pytest.raises(TLSAlert) as caught:
        layer.receive_data(data)
    return caught.value


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_data_both_ways_in_records_of_at_most_2_14(suite):
    server, client = layer_pair(suite)
    data = bytes(range(256)) * 400
    wire = server.send_data(data)
    records, rest = split_records(wire)
    assert rest == b"" and len(records) == 7
    assert all(len(fragment) <= MAX_PLAINTEXT + 256 for *_, fragment in records)
    assert client.receive_data(wire) == data
    assert server.receive_data(client.send_data(b"back")) == b"back"
    assert server.send_data(b"") == b""                  # no empty records are sent


def test_tls13_padding_is_stripped_and_zero_length_data_allowed():
    server, client = layer_pair("TLS_AES_128_GCM_SHA256")
    padded = client.write.seal(0, b"hello" + bytes((APPLICATION_DATA,)) + b"\0" * 20)
    empty = client.write.seal(APPLICATION_DATA, b"")
    assert server.receive_data(padded + empty) == b"hello"


def test_tls13_record_of_only_zeros_is_unexpected_message():
    server, client = layer_pair("TLS_AES_128_GCM_SHA256")
    assert alert_from(server, client.write.seal(0, b"\0" * 8)).description == UNEXPECTED_MESSAGE


@pytest.mark.parametrize("suite", ["TLS_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"])
def test_oversized_plaintext_is_record_overflow(suite):
    server, client = layer_pair(suite)
    too_big = client.write.seal(APPLICATION_DATA, b"x" * (MAX_PLAINTEXT + 1))
    assert alert_from(server, too_big).description == RECORD_OVERFLOW


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "ECDHE-RSA-CHACHA20-POLY1305"])
def test_oversized_header_is_record_overflow_before_the_body_arrives(suite):
    server, _client = layer_pair(suite)
    assert alert_from(server, pack_header(APPLICATION_DATA, 20000)).description == RECORD_OVERFLOW


def test_local_alert_is_sent_and_read_by_the_peer_as_remote():
    server, client = layer_pair("TLS_AES_256_GCM_SHA384")
    good = client.send_data(b"before")
    bad = bytearray(client.send_data(b"tampered"))
    bad[-1] ^= 0x80
    exc = alert_from(server, good + bytes(bad))
    assert (exc.description, exc.remote, exc.data) == (BAD_RECORD_MAC, False, b"before")
    seen = alert_from(client, server.data_to_send())
    assert (seen.description, seen.remote) == (BAD_RECORD_MAC, True)
    assert client.data_to_send() == b""                # no alert answers an alert
    with pytest.raises(TLSAlert):                      # dead from now on
        server.send_data(b"more")


@pytest.mark.parametrize("suite", TLS13_SUITES)
def test_key_update_both_directions(suite):
    server, client = layer_pair(suite)
    wire = client.update_keys(request_peer=True) + client.send_data(b"one")
    assert server.receive_data(wire) == b"one"
    assert server.key_updates_received == 1
    answer = server.send_data(b"two")                  # answer queued before the data
    assert client.receive_data(answer) == b"two"
    assert client.key_updates_received == 1
    assert server.write.seq == 1 and client.write.seq == 1
    # a second request while the first is unanswered: the first answer goes out as it
    # arrives, the second with the next data (when OpenSSL 3.0 sends them too)
    wire = client.update_keys() + client.update_keys() + client.send_data(b"three")
    assert server.receive_data(wire) == b"three"
    first_answer = server.data_to_send()
    assert client.receive_data(first_answer + server.send_data(b"3")) == b"3"
    assert client.key_updates_received == 3
    assert server.receive_data(client.send_data(b"four")) == b"four"
    # asked, and about to ask itself: one KeyUpdate is both (OpenSSL 3.0 does the same)
    server.receive_data(client.update_keys())
    assert client.receive_data(server.update_keys(request_peer=True)) == b""
    assert client.key_updates_received == 4
    assert client.receive_data(server.send_data(b"five")) == b"five"


def test_key_update_rules():
    server, client = layer_pair("TLS_AES_128_GCM_SHA256")
    assert alert_from(server, client.write.seal(HANDSHAKE, bytes((24, 0, 0, 1, 7)))).description == ILLEGAL_PARAMETER
    server, client = layer_pair("TLS_AES_128_GCM_SHA256")
    assert alert_from(server, client.write.seal(HANDSHAKE, bytes((24, 0, 0, 2, 0, 0)))).description == DECODE_ERROR
    server, client = layer_pair("TLS_AES_128_GCM_SHA256")
    two = client.write.seal(HANDSHAKE, KEY_UPDATE(False) + KEY_UPDATE(False))
    assert alert_from(server, two).description == UNEXPECTED_MESSAGE    # not at a record end
    server, _client = layer_pair("ECDHE-RSA-AES256-GCM-SHA384")
    with pytest.raises(ValueError, match="only in TLS 1.3"):
        server.update_keys()


def test_write_key_is_updated_before_the_aes_gcm_limit():
    server, client = layer_pair("TLS_AES_128_GCM_SHA256")
    server.write.seq = client.read.seq = layer_mod.KEY_UPDATE_AFTER_RECORDS
    assert client.receive_data(server.send_data(b"x" * 40000)) == b"x" * 40000
    assert client.key_updates_received == 1 and server.write.seq == 3


def test_new_session_tickets_are_tolerated_by_a_client_only():
    server, client = layer_pair("TLS_AES_128_GCM_SHA256")
    ticket = bytes((4, 0, 1, 0)) + b"t" * 256
    # a ticket split over three records, then data
    wire = b"".join(server.write.seal(HANDSHAKE, ticket[i:i + 100]) for i in range(0, len(ticket), 100))
    assert client.receive_data(wire + server.send_data(b"after")) == b"after"
    assert client.tickets_received == 1
    assert alert_from(server, client.write.seal(HANDSHAKE, ticket)).description == UNEXPECTED_MESSAGE


def test_records_between_handshake_fragments_are_unexpected():
    server, client = layer_pair("TLS_AES_128_GCM_SHA256")
    wire = server.write.seal(HANDSHAKE, bytes((4, 0, 1, 0)) + b"t" * 10) + server.send_data(b"x")
    assert alert_from(client, wire).description == UNEXPECTED_MESSAGE


def test_other_post_handshake_messages_are_unexpected():
    server, client = layer_pair("TLS_AES_256_GCM_SHA384")
    certificate_request = bytes((13, 0, 0, 0))
    assert alert_from(client, server.write.seal(HANDSHAKE, certificate_request)).description == UNEXPECTED_MESSAGE
    server, client = layer_pair("TLS_AES_256_GCM_SHA384")
    assert alert_from(server, client.write.seal(HANDSHAKE, b"")).description == UNEXPECTED_MESSAGE


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"])
def test_close_notify(suite):
    server, client = layer_pair(suite)
    wire = client.send_data(b"last") + client.close() + client.write.seal(APPLICATION_DATA, b"ignored")
    assert server.receive_data(wire) == b"last"
    assert server.peer_closed
    assert server.receive_data(client.write.seal(APPLICATION_DATA, b"still ignored")) == b""
    assert client.receive_data(server.close()) == b""
    assert client.peer_closed
    with pytest.raises(ValueError, match="closed"):
        client.send_data(b"after close")


def test_tls13_user_canceled_is_not_fatal_and_other_warnings_are():
    server, client = layer_pair("TLS_AES_128_GCM_SHA256")
    assert server.receive_data(client.write.seal(ALERT, bytes((1, 90))) + client.send_data(b"x")) == b"x"
    exc = alert_from(server, client.write.seal(ALERT, bytes((1, 100))))   # fatal whatever its level
    assert (exc.description, exc.remote) == (NO_RENEGOTIATION, True)
    server, client = layer_pair("TLS_AES_128_GCM_SHA256")
    assert alert_from(server, client.write.seal(ALERT, b"\x02")).description == DECODE_ERROR


def test_tls12_renegotiation_is_refused_as_envoy_refuses_it():
    """A client's renegotiation ends the session with a fatal no_renegotiation (BoringSSL's
    answer, so Envoy's); a server's HelloRequest gets the warning and the session goes on."""
    server, client = layer_pair("ECDHE-RSA-AES128-GCM-SHA256")
    client_hello = bytes((1, 0, 0, 4)) + b"\x03\x03\0\0"
    exc = alert_from(server, client.write.seal(HANDSHAKE, client_hello))
    assert (exc.description, exc.remote) == (NO_RENEGOTIATION, False)
    sent = alert_from(client, server.data_to_send())
    assert (sent.description, sent.remote) == (NO_RENEGOTIATION, True)
    server, client = layer_pair("ECDHE-RSA-AES128-GCM-SHA256")
    hello_request = bytes((0, 0, 0, 0))
    assert client.receive_data(server.write.seal(HANDSHAKE, hello_request)) == b""
    assert server.receive_data(client.data_to_send() + client.send_data(b"on")) == b"on"
    assert alert_from(client, server.write.seal(HANDSHAKE, client_hello)).description == UNEXPECTED_MESSAGE


def test_tls12_header_rules():
    server, client = layer_pair("ECDHE-ECDSA-CHACHA20-POLY1305")
    record = client.send_data(b"x")
    assert alert_from(server, record[:1] + b"\x03\x01" + record[3:5]).description == PROTOCOL_VERSION   # header alone
    server, client = layer_pair("ECDHE-ECDSA-CHACHA20-POLY1305")
    # A cleartext ChangeCipherSpec does not authenticate; a protected one is unexpected.
    assert alert_from(server, pack_header(CHANGE_CIPHER_SPEC, 1) + b"\x01").description == BAD_RECORD_MAC
    server, client = layer_pair("ECDHE-ECDSA-CHACHA20-POLY1305")
    assert alert_from(server, client.write.seal(CHANGE_CIPHER_SPEC, b"\x01")).description == UNEXPECTED_MESSAGE
    server, client = layer_pair("ECDHE-ECDSA-CHACHA20-POLY1305")
    assert alert_from(server, client.write.seal(99, b"odd")).description == UNEXPECTED_MESSAGE


def test_tls13_header_rules():
    server, _client = layer_pair("TLS_AES_128_GCM_SHA256")
    assert alert_from(server, pack_header(HANDSHAKE, 40)).description == UNEXPECTED_MESSAGE
    server, _client = layer_pair("TLS_AES_128_GCM_SHA256")
    assert alert_from(server, pack_header(APPLICATION_DATA, 40, version=0x0301)).description == DECODE_ERROR
    server, _client = layer_pair("TLS_AES_128_GCM_SHA256")
    assert alert_from(server, pack_header(APPLICATION_DATA, 40, version=0x0203)).description == PROTOCOL_VERSION


# -- properties ---------------------------------------------------------------------------

operations = st.lists(st.one_of(
    st.tuples(st.just("data"), st.integers(0, 40000)),
    st.tuples(st.just("update"), st.booleans()),
), max_size=8)


def build_stream(suite: str, ops, close: bool):
    server, client = layer_pair(suite)
    wire, expected = bytearray(), bytearray()
    for op, arg in ops:
        if op == "data":
            chunk = bytes((arg + i) & 0xFF for i in range(arg))
            wire += client.send_data(chunk)
            expected += chunk
        elif client.tls13:
            wire += client.update_keys(request_peer=arg)
    if close:
        wire += client.close()
    return server, bytes(wire), bytes(expected)


@PROPERTY
@given(suite=st.sampled_from(ALL_SUITES), ops=operations, close=st.booleans(),
       cuts=st.lists(st.integers(0, 200000), max_size=12))
def test_split_invariance(suite, ops, close, cuts):
    whole, wire, expected = build_stream(suite, ops, close)
    split, _, _ = build_stream(suite, ops, close)
    assert whole.receive_data(wire) == expected
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    received = b"".join(split.receive_data(wire[a:b]) for a, b in zip(points, points[1:]))
    assert received == expected
    assert (split.read.seq, split.peer_closed, split.key_updates_received) == \
           (whole.read.seq, whole.peer_closed, whole.key_updates_received)
    assert split.data_to_send() == whole.data_to_send()


@PROPERTY
@given(suite=st.sampled_from(ALL_SUITES), garbage=st.binary(max_size=3000),
       chunks=st.integers(1, 5))
def test_garbage_raises_only_tls_alert(suite, garbage, chunks):
    server, _client = layer_pair(suite)
    step = max(1, len(garbage) // chunks)
    try:
        for i in range(0, len(garbage) + 1, step):
            server.receive_data(garbage[i:i + step])
    except TLSAlert:
        pass


@PROPERTY
@given(suite=st.sampled_from(ALL_SUITES), ops=operations,
       edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4),
       truncate=st.integers(0, 1 << 20))
def test_mutated_streams_raise_only_tls_alert_and_never_yield_forged_data(suite, ops, edits, truncate):
    server, wire, expected = build_stream(suite, ops, close=True)
    if not wire:
        return
    mutated = bytearray(wire)
    for position, value in edits:
        mutated[position % len(mutated)] = value
    mutated = bytes(mutated[:len(mutated) - truncate % len(mutated)])
    try:
        received = server.receive_data(mutated)
    except TLSAlert as exc:
        received = exc.data
    assert expected.startswith(received)     # whatever authenticates is a prefix of the truth


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"])
def test_a_stream_trickled_byte_by_byte(suite):
    server, client = layer_pair(suite)
    data = bytes(range(256)) * 100
    wire = client.send_data(data) + client.send_data(b"tail")
    received = b"".join(server.receive_data(wire[i:i + 1]) for i in range(len(wire)))
    assert received == data + b"tail"
    assert server.pending_in() == b""

"""SOFA Bolt v1 framing (worker/codecs/bolt.py): frames from any byte split, the header map,
heartbeats, local replies, garbage."""

import pytest
from hypothesis import given, settings, strategies as st

from baton.worker.codecs import bolt

_text = st.text(max_size=12)
_headers = st.dictionaries(_text, st.none() | _text, max_size=4)


def _frames():
    request = st.builds(
        lambda rid, cls, hdr, content, timeout, oneway, heartbeat: bolt.request(
            rid, cls, hdr, content, timeout=timeout, oneway=oneway,
            cmd_code=bolt.CMD_HEARTBEAT if heartbeat else bolt.CMD_REQUEST),
        st.integers(0, 2**32 - 1), _text, _headers, st.binary(max_size=40),
        st.integers(-2**31, 2**31 - 1), st.booleans(), st.booleans())
    response = st.builds(
        lambda rid, status, cls, hdr, content: bolt.response(rid, status, cls, hdr, content),
        st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF), _text, _headers,
        st.binary(max_size=40))
    return request | response


@settings(max_examples=150, deadline=None)
@given(st.lists(_frames(), min_size=1, max_size=5), st.lists(st.integers(0, 10**5), max_size=10))
def test_any_byte_split_gives_the_same_frames(raws, cuts):
    stream = b"".join(raws)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    decoder = bolt.Decoder()
    frames = []
    for a, b in zip([0] + points, points + [len(stream)]):
        frames += decoder.feed(stream[a:b])
    assert [f.raw for f in frames] == raws and decoder.pending == 0
    for frame in frames:
        frame.header()                      # every header map written reads back
        assert bytes(frame.content) == frame.raw[len(frame.raw) - len(frame.content):]


@settings(max_examples=200, deadline=None)
@given(_headers)
def test_header_map_round_trip(header):
    assert bolt.decode_header_map(bolt.encode_header_map(header)) == header


def test_request_fields():
    raw = bolt.request(9, "com.alipay.sofa.rpc.core.request.SofaRequest",
                       {"service": "a.B:1.0", "x": None}, b"\x01\x02", timeout=3000, oneway=True)
    frame = bolt.Decoder().feed(raw)[0]
    assert (frame.type, frame.cmd_code, frame.request_id, frame.codec, frame.timeout) == \
        (bolt.TYPE_ONEWAY, bolt.CMD_REQUEST, 9, bolt.CODEC_HESSIAN2, 3000)
    assert frame.oneway and frame.is_request and not frame.is_heartbeat
    assert frame.class_name == "com.alipay.sofa.rpc.core.request.SofaRequest"
    assert frame.header() == {"service": "a.B:1.0", "x": None}
    assert bytes(frame.content) == b"\x01\x02"
    moved = bolt.Decoder().feed(bolt.with_request_id(raw, 2**32 - 1))[0]
    assert moved.request_id == 2**32 - 1 and moved.raw[9:] == raw[9:]


def test_heartbeat_and_error_replies():
    heartbeat = bolt.Decoder().feed(bolt.request(4, cmd_code=bolt.CMD_HEARTBEAT))[0]
    ack = bolt.Decoder().feed(bolt.heartbeat_response(heartbeat))[0]
    # Bolt's HeartbeatAckCommand: a response with the heartbeat command code and SUCCESS.
    assert (ack.type, ack.cmd_code, ack.request_id, ack.status) == \
        (bolt.TYPE_RESPONSE, bolt.CMD_HEARTBEAT, 4, bolt.SUCCESS)
    request = bolt.Decoder().feed(bolt.request(5, "c", {}, b"x"))[0]
    reply = bolt.Decoder().feed(bolt.error_response(request, bolt.NO_PROCESSOR))[0]
    assert (reply.cmd_code, reply.request_id, reply.status, reply.raw[12:]) == \
        (bolt.CMD_RESPONSE, 5, bolt.NO_PROCESSOR, b"\x00" * 8)


@pytest.mark.parametrize("data, message", [
    (b"\x02\x01\x01", "v2 is not supported"), (b"\x07", "unknown protocol"),
    (b"\x01\x05", "unknown command type"),
    (bolt.request(1)[:2] + b"\x00\x09" + bolt.request(1)[4:], "unknown command code")])
def test_refusals(data, message):
    with pytest.raises(bolt.BoltError, match=message):
        bolt.Decoder().feed(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_raises_only_bolt_error(data):
    try:
        for frame in bolt.Decoder().feed(b"\x01" + data):
            frame.header()
            frame.class_name
    except bolt.BoltError:
        pass

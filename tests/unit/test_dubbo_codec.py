"""Dubbo framing (worker/codecs/dubbo.py): frames from any byte split, garbage, invocation
decoding against the tests' Hessian writer, and local replies byte for byte as Envoy's."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from baton.tests.integration.rpc_peers.frames import dubbo_body, dubbo_request
from baton.tests.unit.test_hessian2 import _values
from baton.worker.codecs import dubbo

_names = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_.$]{0,40}", fullmatch=True)


def _split(data: bytes, cuts) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), _names, _names,
                          st.lists(_values, max_size=2),
                          st.dictionaries(_names, st.text(max_size=10), max_size=3),
                          st.booleans()), min_size=1, max_size=4),
       st.lists(st.integers(0, 10**6), max_size=12), st.randoms(use_true_random=False))
def test_any_byte_split_gives_the_same_frames_and_calls(requests, cuts, rng):
    stream = b"".join(dubbo_request(rid, svc, m, args, att, two_way=tw, rng=rng)
                      for rid, svc, m, args, att, tw in requests)
    decoder = dubbo.Decoder()
    frames = [f for chunk in _split(stream, cuts) for f in decoder.feed(chunk)]
    assert decoder.pending == 0
    assert [f.request_id for f in frames] == [r[0] for r in requests]
    assert b"".join(f.raw for f in frames) == stream
    for frame, (rid, svc, method, args, att, two_way) in zip(frames, requests):
        assert frame.is_request and frame.two_way == two_way and not frame.is_event
        call = dubbo.invocation(frame)
        assert (call.service, call.method, call.version) == (svc, method, "")
        assert repr(list(call.arguments)) == repr(args)
        assert call.attachments == att
        assert call.group == att.get("group")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 79))
def test_garbage_raises_only_dubbo_error(data, cut):
    decoder = dubbo.Decoder()
    try:
        for chunk in (dubbo.MAGIC + data[:cut], data[cut:]):
            for frame in decoder.feed(chunk):
                dubbo.invocation(frame)
    except dubbo.DubboError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60))
def test_any_body_raises_only_dubbo_error(body):
    frame = dubbo.Decoder().feed(dubbo.frame(0xC2, 0, 1, body))[0]
    try:
        dubbo.invocation(frame)
    except dubbo.DubboError:
        pass


def test_request_ids_are_rewritten_in_place():
    raw = dubbo_request(7, "a.B", "m")
    moved = dubbo.with_request_id(raw, 2**64 - 1)
    frame = dubbo.Decoder().feed(moved)[0]
    assert frame.request_id == 2**64 - 1 and moved[:4] == raw[:4] and moved[12:] == raw[12:]


@pytest.mark.parametrize("descriptor, count", [("", 0), ("I", 1), ("Ljava/lang/String;[IJ", 3),
                                               ("[[Ljava/util/Map;Z", 2)])
def test_parameter_count(descriptor, count):
    assert dubbo.parameter_count(descriptor) == count


@pytest.mark.parametrize("descriptor", ["Q", "Ljava/lang/String", "[", "I["])
def test_bad_descriptors_are_dubbo_errors(descriptor):
    with pytest.raises(dubbo.DubboError):
        dubbo.parameter_count(descriptor)


def test_a_bad_magic_or_oversized_body_is_refused():
    with pytest.raises(dubbo.DubboError, match="magic"):
        dubbo.Decoder().feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(dubbo.DubboError, match="limit"):
        dubbo.Decoder(max_body=100).feed(dubbo.frame(0xC2, 0, 1, b"x" * 101))


def test_only_hessian2_bodies_are_read():
    frame = dubbo.Decoder().feed(dubbo.frame(0xC0 | 6, 0, 1, dubbo_body("a", "b")))[0]
    with pytest.raises(dubbo.DubboError, match="serialization 6"):
        dubbo.invocation(frame)


# Captured from Envoy 1.40's dubbo_proxy (tests/integration/test_rpc_differential.py checks
# them live): the no-route reply to request 77 and the heartbeat answer to request 5.
ENVOY_NO_ROUTE = bytes.fromhex("dabb023c000000000000004d00000033903030") + \
    b"dubbo router: no route for interface 'x.Nothing'"
ENVOY_HEARTBEAT = bytes.fromhex("dabb22140000000000000005000000014e")


def test_local_replies_are_envoys_less_the_response_type():
    """Envoy's header, status and message; the body without Envoy's leading response type
    (int 0, 0x90), which Dubbo's own codec does not write for a non-OK status."""
    request = dubbo.Decoder().feed(dubbo_request(77, "x.Nothing", "m"))[0]
    reply = dubbo.error_response(request, dubbo.SERVICE_NOT_FOUND,
                                 "dubbo router: no route for interface 'x.Nothing'")
    envoy_body = ENVOY_NO_ROUTE[dubbo.HEADER_SIZE:]
    assert envoy_body[:1] == b"\x90"
    assert reply == dubbo.frame(ENVOY_NO_ROUTE[2], ENVOY_NO_ROUTE[3], 77, envoy_body[1:])
    heartbeat = dubbo.Decoder().feed(dubbo.heartbeat_request(5))[0]
    assert heartbeat.is_heartbeat
    assert dubbo.heartbeat_response(heartbeat) == ENVOY_HEARTBEAT


def test_attachments_keep_only_string_keys():
    body = dubbo_body("s", "m", (), {"group": "g", "timeout": "300"}, rng=random.Random(1))
    call = dubbo.invocation(dubbo.Decoder().feed(dubbo.frame(0xC2, 0, 1, body))[0])
    assert call.group == "g" and call.attachments["timeout"] == "300"

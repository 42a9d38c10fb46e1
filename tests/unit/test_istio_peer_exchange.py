"""The TCP metadata exchange's frame (worker/proxy/istio/peer_exchange.py): byte layout,
reading it off a stream cut anywhere, and streams that are no exchange."""

from __future__ import annotations

from google.protobuf import any_pb2, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from baton.worker.proxy.istio.peer_exchange import MAGIC, FrameReader, frame

METADATA = {"WORKLOAD_NAME": "reviews-v2", "NAMESPACE": "shop", "LABELS": {"app": "reviews"}}


def test_frame_layout_is_istios():
    data = frame("sidecar~10.0.0.2~reviews-v2-0.shop~shop.svc.cluster.local", METADATA)
    assert int.from_bytes(data[:4], "big") == MAGIC == 0x3D230467
    assert int.from_bytes(data[4:8], "big") == len(data) - 8
    wrapped = any_pb2.Any()
    wrapped.ParseFromString(data[8:])
    assert wrapped.type_url == "type.googleapis.com/google.protobuf.Struct"
    message = struct_pb2.Struct()
    assert wrapped.Unpack(message)
    assert message["x-envoy-peer-metadata-id"].startswith("sidecar~10.0.0.2~")
    assert message["x-envoy-peer-metadata"]["WORKLOAD_NAME"] == "reviews-v2"


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=6), st.binary(max_size=50))
def test_frame_is_taken_off_a_stream_cut_anywhere(cuts, after):
    stream = frame("node", METADATA) + after
    reader, out, start = FrameReader(), b"", 0
    for cut in sorted(cuts) + [len(stream)]:
        cut = min(max(cut, start), len(stream))
        out += reader.feed(stream[start:cut])
        start = cut
    assert reader.done and reader.peer_metadata == METADATA and reader.peer_id == "node"
    assert out == after


def test_a_stream_that_is_no_exchange_passes_through_whole():
    reader = FrameReader()
    assert reader.feed(b"GET ") == b""                  # 8 bytes decide
    assert reader.feed(b"/ HTTP/1.1\r\n") == b"GET / HTTP/1.1\r\n"
    assert reader.done and reader.peer_metadata is None
    assert reader.feed(b"more") == b"more"
    # The magic with an absurd size is no exchange either.
    reader = FrameReader()
    huge = MAGIC.to_bytes(4, "big") + (1 << 30).to_bytes(4, "big") + b"x"
    assert reader.feed(huge) == huge and reader.peer_metadata is None


def test_an_undecodable_payload_is_an_exchange_without_a_peer():
    bad = MAGIC.to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x0a\x09x" + b"after"
    reader = FrameReader()
    assert reader.feed(bad) == b"after" and reader.peer_metadata == {}

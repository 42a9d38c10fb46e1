"""The Stream writes its StreamInfo fields itself (stream.py, a call a request fewer): each
must start as StreamInfo.__init__ starts it, for a request that came whole, one whose body
is to come, and the codec's unparsable request (Stream.for_error)."""

from types import SimpleNamespace

import pytest

from baton.worker.codecs.message import Headers, Request
from baton.worker.proxy.http.stream import Stream
from baton.worker.proxy.http.stream_info import StreamInfo


def _conn():
    hcm = SimpleNamespace(buffer_limit=1024, stream_idle_timeout=300.0)
    loop = SimpleNamespace(time=lambda: 42.5)
    worker = SimpleNamespace(stats=SimpleNamespace(counters={}))
    return SimpleNamespace(loop=loop, worker=worker, hcm=hcm, peer=("10.0.0.1", 5555),
                           local=("10.0.0.2", 80), id=7)


@pytest.mark.parametrize("version,end_stream", [("1.1", True), ("2", False), ("1.0", True)])
def test_a_stream_starts_its_info_as_stream_info_does(version, end_stream):
    request = Request("GET", "/a?b", "example.com", Headers([("x", "y")]), version=version)
    event = SimpleNamespace(request=request, stream_id=3, end_stream=end_stream,
                            upgrade=None, expect_continue=False)
    conn = _conn()
    stream = Stream(conn, event)
    protocol = {"1.1": "HTTP/1.1", "2": "HTTP/2", "1.0": "HTTP/1.0"}[version]
    info = StreamInfo(request, 42.5, protocol, conn.peer, conn.local, conn.id)
    if end_stream:
        info.last_request_byte = 42.5       # complete as it began
    _same_fields(stream, info)


def test_a_stream_without_a_request_starts_its_info_as_stream_info_does():
    conn = _conn()
    stream = Stream(conn, None)
    _same_fields(stream, StreamInfo(None, 42.5, "HTTP/1.1", conn.peer, conn.local, conn.id))


def _same_fields(stream, info):
    for name in StreamInfo.__slots__:
        if name == "start_time":            # the wall clock, read by each
            assert abs(getattr(stream, name) - info.start_time) < 5
            continue
        assert getattr(stream, name) == getattr(info, name), name

"""A request that ends its connection (`Connection: close`, HTTP/1.0 without keep-alive) served
from the known-request memo (worker/codecs/http1_server.py) through the connection manager:
whatever the client sends after it must come to the same end as when llhttp read the request:
the same bytes to the client and upstream, the same close and the same stats. The codec-level
proof (events, state, every split) is test_http1_known_messages.py's; this one is the whole
connection on the express test's rig.
"""

from __future__ import annotations

import pytest

from baton.worker.codecs import http1_head
from tests.unit.test_http_express import RESPONSE, Rig, _normalised, loop  # noqa: F401

_ENDING = [b"GET /c HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
           b"GET /c HTTP/1.0\r\nHost: example.com\r\n\r\n"]
_AFTER = [b"", b"\r\n", b"x", b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n"]


def _connection(tmp_path, loop, ending: bytes, after: bytes, known: bool) -> tuple:
    """(to the client, to the upstreams, the client connection closing, stats) for `ending`
    read alone, then `after`, then the upstream's answer (if it went there) and the client's
    EOF."""
    rig = Rig(tmp_path, loop)
    http1_head.KNOWN_REQUESTS.clear()
    for gate in (http1_head.REQUESTS_GATE, http1_head.REQUEST_LINES_GATE):
        gate.__init__()
    if known:
        Rig(tmp_path, loop).conn.data_received(ending)     # another connection's: remembered
        assert ending in http1_head.KNOWN_REQUESTS
    rig.conn.data_received(ending)
    assert (rig.conn.codec._parser is None) is known
    if after:
        rig.conn.data_received(after)
    sent = b""
    for upstream in rig.upstreams.values():     # none for a local reply (HTTP/1.0: 426)
        if upstream.streams:
            sent += upstream.transport.take()
            upstream.data_received(RESPONSE)
    out = rig.down.take()
    rig.conn.eof_received()
    out += rig.down.take()
    rig.conn.connection_lost(None)
    return _normalised(out), _normalised(sent), rig.down.aborted, rig.worker.stats.snapshot()


@pytest.mark.parametrize("after", _AFTER)
@pytest.mark.parametrize("ending", _ENDING, ids=["connection-close", "http/1.0"])
def test_what_follows_a_known_request_that_ends_the_connection_ends_as_parsed(tmp_path, loop,
                                                                             ending, after):
    parsed = _connection(tmp_path, loop, ending, after, known=False)
    known = _connection(tmp_path, loop, ending, after, known=True)
    assert known == parsed
    assert b"connection: close" in parsed[0]

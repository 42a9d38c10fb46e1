"""An HTTP/2 client connection writes what its streams queued once per turn of the loop
(connection_manager.HttpConnection.flush_soon): the responses of h2load -m10's ten streams,
each from its own upstream connection in its own callback, go out in one write, and so do the
local replies of one turn; past the write buffer's limit, at once."""

from __future__ import annotations

import asyncio
import importlib.util
import struct
from pathlib import Path

import pytest
from hpack import Decoder, Encoder

from tests.unit.test_http_express import Rig

# bench/h2_cost.py's rig helpers (bench/ is not a package).
_spec = importlib.util.spec_from_file_location(
    "h2_cost", Path(__file__).resolve().parents[2] / "bench" / "h2_cost.py")
h2_cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h2_cost)

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\nConnection: keep-alive\r\n\r\n"
            + b"x" * 64)
GET = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1:10000"), (":path", "/")]


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">LBL", len(payload) << 8 | kind, flags, stream_id) + payload


def statuses(data: bytes, decoder: Decoder) -> list:
    """(stream, :status) of each HEADERS frame in `data`."""
    out, pos = [], 0
    while pos + 9 <= len(data):
        length, kind, stream_id = int.from_bytes(data[pos:pos + 3], "big"), data[pos + 3], \
            int.from_bytes(data[pos + 5:pos + 9], "big")
        if kind == 1:
            out.append((stream_id, dict(decoder.decode(data[pos + 9:pos + 9 + length]))[":status"]))
        pos += 9 + length
    return out


@pytest.fixture
def rig(tmp_path):
    loop = asyncio.new_event_loop()
    rig = Rig(tmp_path, loop)
    rig.ups = list(rig.upstreams.values()) + h2_cost.idle_upstreams(rig)   # one per stream
    rig.loop = loop
    rig.decoder = Decoder()
    rig.conn.data_received(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0))
    rig.down.take()
    yield rig
    loop.close()


def end_of_turn(loop) -> None:
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_the_responses_of_one_turn_go_out_in_one_write(rig):
    encoder = Encoder()
    rig.conn.data_received(b"".join(frame(1, 5, 1 + 2 * i, encoder.encode(GET))
                                    for i in range(10)))
    rig.down.written.clear()
    busy = [up for up in rig.ups if up.streams]
    assert len(busy) == 10
    for up in busy[:9]:                 # nine answered in this turn, each in its own callback
        up.data_received(RESPONSE)
    assert rig.down.written == []       # nothing yet: the turn is not over
    end_of_turn(rig.loop)
    assert len(rig.down.written) == 1
    answered = statuses(rig.down.take(), rig.decoder)
    assert len(answered) == 9
    busy[9].data_received(RESPONSE)     # the last stream too, at the end of its turn
    assert rig.down.written == []
    end_of_turn(rig.loop)
    assert len(rig.down.written) == 1
    answered += statuses(rig.down.take(), rig.decoder)
    assert sorted(answered) == [(1 + 2 * i, "200") for i in range(10)]


def test_past_the_write_buffer_limit_the_bytes_go_at_once(rig):
    rig.conn.hcm.buffer_limit = 100      # one response's head and body are more
    encoder = Encoder()
    rig.conn.data_received(b"".join(frame(1, 5, 1 + 2 * i, encoder.encode(GET))
                                    for i in range(3)))
    rig.down.written.clear()
    busy = [up for up in rig.ups if up.streams]
    busy[0].data_received(RESPONSE)
    assert len(rig.down.written) == 1 and len(statuses(rig.down.take(), rig.decoder)) == 1


def test_local_replies_go_out_in_one_write_a_turn(rig):
    # Ten CONNECT requests in one read, which no route takes: ten 403s from the proxy itself,
    # one write a turn.
    encoder = Encoder()
    fields = [(":method", "CONNECT"), (":authority", "example.com:443")]
    rig.conn.data_received(b"".join(frame(1, 4, 1 + 2 * i, encoder.encode(fields))
                                    for i in range(10)))
    turns = [(len(rig.down.written), statuses(rig.down.take(), rig.decoder))]
    while rig.conn.backlog is not None and len(turns) < 50:
        end_of_turn(rig.loop)
        turns.append((len(rig.down.written), statuses(rig.down.take(), rig.decoder)))
    assert [s for _, answered in turns for s in answered] == \
        [(1 + 2 * i, "403") for i in range(10)]
    assert all(writes <= 1 for writes, _ in turns), turns
    assert max(len(answered) for _, answered in turns) >= 2, turns


def test_a_move_waiting_for_the_connection_goes_on_once_the_turn_wrote_its_bytes(rig):
    """The last stream ended (its bytes wait for the end of the turn) when the reload asked to
    hold the connection: not movable yet, with bytes unsent. Once the turn wrote them, the
    move is told at once; it waited for new streams to time out (h2move.HOLD_LIMIT) and
    drained the connection instead (found in review)."""
    from baton.worker.proxy.http import h2move
    encoder = Encoder()
    rig.conn.data_received(frame(1, 5, 1, encoder.encode(GET)))
    rig.down.written.clear()
    busy = [up for up in rig.ups if up.streams]
    busy[0].data_received(RESPONSE)
    assert rig.conn.flush_handle is not None
    rig.worker.handoff_accepts = {h2move.RECORD}
    rig.conn.listener.spec = {}
    fired = []
    rig.conn.hold_when_idle(fired.append)
    assert not fired
    end_of_turn(rig.loop)
    assert rig.down.written and fired == [rig.conn]


def test_a_move_waiting_for_bytes_the_kernel_has_not_taken_goes_on_once_it_took_them(rig):
    """The last stream's bytes were written but sit in the transport's buffer (the client
    reads slowly), under the high-water mark: asyncio calls no resume_writing when the kernel
    takes them later, so nothing told the waiting move; it waited h2move.HOLD_LIMIT (2 s) and
    drained the connection instead of moving it (found looking for a flaky reload test)."""
    import time

    from baton.worker.proxy.http import h2move
    encoder = Encoder()
    rig.conn.data_received(frame(1, 5, 1, encoder.encode(GET)))
    busy = [up for up in rig.ups if up.streams]
    busy[0].data_received(RESPONSE)
    end_of_turn(rig.loop)
    assert rig.down.written and not rig.conn.streams
    unsent = [100]
    rig.down.get_write_buffer_size = lambda: unsent[0]
    rig.worker.handoff_accepts = {h2move.RECORD}
    rig.conn.listener.spec = {}
    fired = []
    rig.conn.hold_when_idle(fired.append)
    end_of_turn(rig.loop)
    assert not fired                    # bytes unsent: not movable yet
    unsent[0] = 0                       # the kernel took them; no event says so
    deadline = time.monotonic() + 1.0   # well inside HOLD_LIMIT
    while not fired and time.monotonic() < deadline:
        rig.loop.run_until_complete(asyncio.sleep(0.005))
    assert fired == [rig.conn]
    assert rig.conn.hold_timer is None and rig.conn.unsent_poll is None

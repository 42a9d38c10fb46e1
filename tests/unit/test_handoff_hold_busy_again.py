"""A connection whose hold fired (reading paused for the move) but that is busy again when
the move loop wakes (worker/migration.py _move_when_idle, _hold_again) reads again and waits
for its next idle moment, then moves. Found by review R1 (F2): it was dropped from the
connections waited for, never sent and never released, its reading paused until the drain
closed it.

A real HttpConnection (test_http_express's Rig) with a response in flight to a slow client:
movable at once (record http1-inflight), so its hold fires and pauses reading; the upstream's
next chunk lands in the client's transport buffer before the loop wakes. The move's sending
step (_move_past_dead_receivers) is replaced by one that records the batch.
"""

from __future__ import annotations

from baton.worker import migration
from baton.worker.connection import Move
from baton.worker.proxy.http import inflight

from .test_http_express import REQUEST, Rig, loop  # noqa: F401 - a fixture

LENGTH = 200000


def _in_flight_to_a_slow_client(tmp_path, loop):
    """A response in flight, its first bytes taken by the client: movable now; the client
    takes nothing more until the test says (`rig.down.take()`)."""
    rig = Rig(tmp_path, loop)
    conn = rig.conn
    conn.listener.spec = {}
    rig.worker.handoff_accepts = {inflight.RECORD: [1]}
    rig.worker.connections = {conn.id: conn}
    rig.worker.id = 1
    conn.data_received(REQUEST)
    upstream = rig.busy_upstream()
    upstream.transport.take()
    upstream.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % LENGTH
                           + b"a" * 1000)
    rig.down.take()
    rig.down.get_write_buffer_size = lambda: sum(map(len, rig.down.written))
    return rig, conn, upstream


def test_a_fired_hold_busy_again_reads_again_and_moves_at_its_next_idle_moment(
        tmp_path, loop, monkeypatch):
    rig, conn, upstream = _in_flight_to_a_slow_client(tmp_path, loop)
    assert conn.readiness() is Move.NOW
    seen = []           # what the loop saw at each hold: (reading, readiness)

    def upstream_reads_on():        # before the move loop wakes: busy again
        upstream.data_received(b"b" * 65536)

    def response_ends():            # the client takes it all; the exchange is over
        rig.down.take()
        upstream.data_received(b"c" * (LENGTH - 1000 - 65536))
        rig.down.take()
        conn.move_if_ready()        # as the unsent-bytes poll would, without its wait

    real_hold = conn.hold_when_idle

    def hold_when_idle(on_idle):
        seen.append((rig.down.reading, conn.readiness()))
        real_hold(on_idle)
        loop.call_soon(upstream_reads_on if len(seen) == 1 else response_ends)
    conn.hold_when_idle = hold_when_idle
    batches = []

    async def sent(worker, batch, peers, client_only):
        batches.append((list(batch), rig.down.reading, conn.held_reading))
        return len(batch), set(), peers
    monkeypatch.setattr(migration, "_move_past_dead_receivers", sent)
    moved, kept = loop.run_until_complete(
        migration._move_when_idle(rig.worker, [object()], 5.0, set()))
    assert len(seen) == 2, "busy again at wake-up, it was not waited for"
    assert seen[1] == (True, Move.WHEN_IDLE), "held again with its reading still paused"
    assert batches == [([conn], False, True)], "not sent, paused, at its next idle moment"
    assert (moved, kept) == (1, set())


def test_a_fired_hold_busy_again_with_no_receiver_left_reads_again(tmp_path, loop):
    """No receiver left: nothing to wait for, but it must not stay paused either."""
    rig, conn, upstream = _in_flight_to_a_slow_client(tmp_path, loop)
    real_hold = conn.hold_when_idle

    def hold_when_idle(on_idle):
        real_hold(on_idle)
        loop.call_soon(upstream.data_received, b"b" * 65536)
    conn.hold_when_idle = hold_when_idle
    loop.run_until_complete(migration._move_when_idle(rig.worker, [], 0.5, set()))
    assert rig.down.reading and not conn.held_reading, "left paused for a move that is gone"
    assert conn.on_idle is None

"""envoy.overload_actions.reset_high_memory_stream: how much memory a stream holds in Baton's
buffers, and which streams the action resets.

Envoy's rules (1.40, source/common/buffer/watermark_buffer.cc and server/worker_impl.cc):
  - Every buffer slice is charged to the account of the stream that made it. An account is
    tracked once its balance reaches 2^(p - 1) bytes, p being the bootstrap's
    overload_manager.buffer_factory_config.minimum_account_to_track_power_of_two (Envoy
    shifts balances right by p - 1; its docs say 2^p, its code and tests 2^(p - 1)), and sits
    in one of 8 power-of-two memory classes: class i holds [2^(p-1+i), 2^(p+i)), the last
    class everything above. Without buffer_factory_config nothing is tracked.
  - When the action's state changes, each worker resets the streams of the
    floor(value * 8) + 1 largest classes (capped at 8), largest class first, at most 50
    streams per invocation; a stream is reset as its codec resets it locally (HTTP/2:
    RST_STREAM INTERNAL_ERROR, measured on Envoy 1.40; HTTP/1: the connection ends), which
    its connection manager sees as a reset (downstream_rq_rx_reset, response flag OM,
    details "overload"). The counter
    envoy.overload_actions.reset_high_memory_stream.count adds the streams reset.
  - Envoy invokes it on every change of the action's value, including the fall to 0 (where
    its code would still clear the largest class); Baton resets nothing at 0, as Envoy's docs
    say ("below the scaling threshold no streams will be reset").

How Baton accounts: not as bytes move. Envoy keeps its classes current on every charge and
credit because it has the slices at hand; in Python a charge per buffer operation would tax
every request for an action that fires rarely. A stream's balance is read instead when the
action fires, from the places where Baton holds a stream's bytes (`stream_balance`): the
response bytes the client has not taken (HTTP/2: held by its flow-control window in the
codec; HTTP/1: the connection's unsent bytes, which are this stream's alone) and the request
body not yet taken by the upstream (held for a connection or a retry, HTTP/2 window, unsent on
an HTTP/1 upstream connection). The data path pays nothing; one invocation walks the worker's
open streams once. The classes, the order and the cap are Envoy's, so the same streams are
chosen. Bytes of an HTTP/2 connection that the transport has not sent yet belong to no single
stream and count for none (Baton stops reading every upstream of that connection once they
pass its buffer limit, so they stay bounded by it).
"""

from __future__ import annotations

import logging

log = logging.getLogger("baton.overload")

NUM_MEMORY_CLASSES = 8
MAX_RESETS_PER_INVOCATION = 50
RESET_COUNT = "envoy.overload_actions.reset_high_memory_stream.count"


def memory_class(balance: int, bitshift: int) -> int | None:
    """Envoy's class of an account: None below 2^bitshift bytes, else 0..7."""
    shifted = balance >> bitshift
    if not shifted:
        return None
    return min(shifted.bit_length() - 1, NUM_MEMORY_CLASSES - 1)


def classes_to_clear(value: float) -> int:
    return min(int(value * NUM_MEMORY_CLASSES) + 1, NUM_MEMORY_CLASSES)


def choose(balances, value: float, bitshift: int) -> list:
    """The streams to reset for the action's `value`, from (stream, balance) pairs: the
    floor(value * 8) + 1 largest classes, largest first, at most 50."""
    lowest = NUM_MEMORY_CLASSES - classes_to_clear(value)
    buckets: list[list] = [[] for _ in range(NUM_MEMORY_CLASSES)]
    for stream, balance in balances:
        index = memory_class(balance, bitshift)
        if index is not None and index >= lowest:
            buckets[index].append(stream)
    chosen: list = []
    for bucket in reversed(buckets):
        chosen.extend(bucket[:MAX_RESETS_PER_INVOCATION - len(chosen)])
    return chosen


def stream_balance(stream) -> int:
    """The bytes Baton holds for one open stream of an HTTP connection (see the module's
    docstring). `stream`: a Stream, or an express exchange (a bodiless HTTP/1.1 request whose
    only bytes are on the client's side)."""
    conn = stream.conn
    codec = conn.codec
    held = codec.pending(stream.id)
    if not codec.multiplexed and conn.transport is not None:
        held += conn.transport.get_write_buffer_size()
    held += getattr(stream, "held_bytes", 0)        # body that came before the router
    router = stream.router
    if router is None:
        return held
    if router is stream:
        # The lane's exchange or a Stream's straight step is its own router: its upstream is
        # an HTTP/1.1 connection of its own, whose unsent bytes are this stream's request.
        up = stream.upstream if hasattr(stream, "upstream") else None
        if up is not None and up.transport is not None:
            held += up.codec.pending(stream.upstream_id) + up.transport.get_write_buffer_size()
        return held
    if router.body:
        held += sum(map(len, router.body))
    upstream = router.upstream
    if upstream is not None and not upstream.done and upstream.conn is not None:
        up = upstream.conn
        held += up.codec.pending(upstream.stream_id)
        if not upstream.pool.http2 and up.transport is not None:
            held += up.transport.get_write_buffer_size()
    return held


class HeldResponse:
    """A response the connection manager has finished whose bytes are still held for a
    client that does not read (HTTP/2: in the codec, for the window; HTTP/1.1: in the
    transport): in Envoy that stream, and its memory, live until the last byte is sent, so
    the action can reset it too (an upstream that answers at once leaves it all here)."""

    __slots__ = ("conn", "id")
    router = None

    def __init__(self, conn, stream_id: int):
        self.conn = conn
        self.id = stream_id

    def reset_by_overload(self) -> None:
        from .codecs.h2server import INTERNAL_ERROR
        conn = self.conn
        conn.worker.stats.counters[conn.hcm.stat_rq_rx_reset] += 1
        if conn.codec.multiplexed:
            conn.codec.reset_held(self.id, INTERNAL_ERROR)
            conn.flush()
        else:
            conn.abort()                # HTTP/1.1: the connection ends


def open_streams(worker):
    """Every open stream of the worker's HTTP connections, and the HTTP/2 responses whose
    bytes still wait for their client's window."""
    for conn in list(worker.connections.values()):
        if conn.kind == "http" and not conn.closed:
            yield from list(conn.streams.values())
            codec = conn.codec
            if codec is None:
                continue
            if codec.multiplexed:
                for stream_id in codec.held_stream_ids():
                    if stream_id not in conn.streams:
                        yield HeldResponse(conn, stream_id)
            elif not conn.streams and conn.transport is not None and \
                    conn.transport.get_write_buffer_size():
                yield HeldResponse(conn, 0)


def reset_high_memory_streams(worker, value: float, bitshift: int | None) -> int:
    """One invocation of the action on this worker: the streams reset (counted)."""
    if not value or bitshift is None:
        return 0
    balances = ((stream, stream_balance(stream)) for stream in open_streams(worker))
    chosen = choose(balances, value, bitshift)
    for stream in chosen:
        stream.reset_by_overload()
    if chosen:
        worker.stats.counters[RESET_COUNT] += len(chosen)
        log.warning("overload: worker %d: reset %d stream(s) holding the most memory "
                    "(reset_high_memory_stream at %d%%)", worker.id, len(chosen), int(value * 100))
    return len(chosen)

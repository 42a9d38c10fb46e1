"""How Envoy 1.40's connection manager counts and flags the end of a downstream connection and
of the streams a connection's end cuts: the counters operators' dashboards read
(http.<prefix>.downstream_cx_destroy*, downstream_rq_rx_reset, ...), called from the few
places where HttpConnection ends (connection_manager.py) and where a request is refused by
the codec (stream.py). Measured against Envoy 1.40, tests/integration/
test_differential_access_log_fields.py; the meanings: Envoy's "HTTP connection manager
statistics" and ConnectionManagerImpl::onEvent / doConnectionClose.

- A connection ends once: destroy, and destroy_remote (the client closed or reset it) or
  destroy_local (Baton closed it); with a request in flight also destroy_active_rq and its
  _remote/_local twin. A connection that moves to another worker at a reload is not
  destroyed (it goes on there) and counts nothing.
- A delayed close (Baton shut its side and waits for the client's) that the client does not
  answer within delayed_close_timeout: downstream_cx_delayed_close_timeout, and it is a local
  close.
- Each stream in flight when a connection's end is decided counts in downstream_rq_rx_reset
  (Envoy resets them with ConnectionTermination and counts any reset it takes that way) and
  logs DC.
- A request the codec refuses (HTTP/1.1's 400, HTTP/1.0 without accept_http_10: 426) is a
  codec error: its line has DPE, and its stream, never a complete request, ends in a reset
  (downstream_rq_rx_reset).
"""

from __future__ import annotations


def closing(conn, remote: bool) -> None:
    """`conn` (an HttpConnection, still open) is about to end: closed by the client
    (`remote`) or by Baton. With a request in flight, destroy_active_rq and its twin
    (Envoy's doConnectionClose counts them when it decides, before any delayed close)."""
    if conn.closed:
        return
    live = sum(not stream.done for stream in conn.streams.values())
    if live:
        hcm = conn.hcm
        counters = conn.worker.stats.counters
        counters[hcm.stat_cx_destroy_active_rq] += 1
        counters[hcm.stat_cx_destroy_remote_active_rq if remote else
                 hcm.stat_cx_destroy_local_active_rq] += 1
        # Envoy resets them there and then (resetAllStreams); Baton ends them when the
        # transport is gone (stream_cut), which may be a turn later.
        counters[hcm.stat_rq_rx_reset] += live


def connection_ends(conn, remote: bool) -> None:
    """`conn`'s socket is closed: by the client (`remote`: its FIN or RST, during a delayed
    close too) or by Baton (at once, or when delayed_close_timeout passed), as Envoy's close
    event says. Counted once: the first call wins (a client's FIN is followed by Baton's own
    close)."""
    if conn.destroy_counted:
        return
    conn.destroy_counted = True
    hcm = conn.hcm
    counters = conn.worker.stats.counters
    counters[hcm.stat_cx_destroy] += 1
    counters[hcm.stat_cx_destroy_remote if remote else hcm.stat_cx_destroy_local] += 1


def client_closed(conn) -> None:
    """The client closed or reset `conn` before Baton did."""
    closing(conn, True)
    connection_ends(conn, True)


def closed_here(conn) -> None:
    """Baton closes `conn` at once (no delayed close)."""
    closing(conn, False)
    connection_ends(conn, False)


def transport_lost(conn, exc) -> None:
    """`conn`'s transport is gone (asyncio's connection_lost): the end of a delayed close
    that timed out (Baton's transport.close(): no `exc`), or a client's reset or error
    before Baton closed. Nothing for a connection closed before (counted then) or moved."""
    if conn.destroy_counted:
        return
    if conn.lingering is not None and exc is None:
        conn.worker.stats.counters[conn.hcm.stat_cx_delayed_close_timeout] += 1
        connection_ends(conn, False)
    elif not conn.closed or conn.lingering is not None:
        client_closed(conn)


def stream_cut(stream) -> None:
    """`stream` was in flight when its connection ended (an express exchange is handed back
    to the full path first, as its reset would: express.py)."""
    if hasattr(stream, "_hand_back"):
        if stream.done and stream.handed_to is None:
            return
        stream = stream._hand_back()
    # A response forwarded from the previous generation (inflight.py's ForwardedResponse)
    # has no StreamInfo here: its exchange is logged where it runs, told by its reset.
    info = getattr(stream, "info", None)
    if info is not None and not stream.done:
        info.response_flags.append("DC")            # (counted by closing())


def last_stream_done(conn, stream) -> None:
    """HTTP/1.1: `conn` closes after its last response. Envoy 1.40 closes at once (a local
    close) when that request was read whole, for nothing is left unread to race the close
    (checkForDeferredClose's skip_delay_close); else its delayed close waits for the client
    (transport_lost and eof_received count what ends it). Baton lingers either way."""
    if conn.codec.multiplexed or not getattr(stream, "remote_complete", True):
        return
    info = getattr(stream, "info", None)            # (an express exchange has none)
    if info is None or "DPE" not in info.response_flags:
        connection_ends(conn, False)


def codec_error(stream) -> None:
    """`stream` answers a request its codec refused."""
    stream.info.response_flags.append("DPE")
    stream.stats[stream.hcm.stat_rq_rx_reset] += 1


def http10_refused(stream) -> None:
    """Envoy's HTTP/1.1 codec refuses HTTP/1.0 while it reads the head: a codec error whose
    stream has no request ('"- - HTTP/1.1" 426 DPE' in the default format), counted in
    downstream_cx_protocol_error."""
    info = stream.info
    info.request = None
    info.protocol = "HTTP/1.1"
    stream.stats[stream.hcm.stat_cx_protocol_error] += 1
    codec_error(stream)

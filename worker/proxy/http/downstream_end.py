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
- A delayed close (Baton holds its FIN and waits for the client's close, as Envoy does) that
  the client does not end within delayed_close_timeout: downstream_cx_delayed_close_timeout,
  and it is a local close; a client that closes first (on the answer) is a remote close.
- A client's close (its FIN or RST) cuts what is in flight: DC, downstream_remote_disconnect,
  destroy_remote_active_rq and downstream_rq_rx_reset, not a codec error (Envoy's codec
  never reads an end of input: the connection's close resets the streams).
- Each stream in flight when a connection's end is decided counts in downstream_rq_rx_reset
  (Envoy resets them with ConnectionTermination and counts any reset it takes that way) and
  logs DC.
- A request the codec refuses (HTTP/1.1's 400, HTTP/1.0 without accept_http_10: 426) is a
  codec error: its line has DPE, and its stream, never a complete request, ends in a reset
  (downstream_rq_rx_reset). The request-headers timeout (Baton's codec gives up the head
  with a 408) is not: Envoy's ActiveStream::onRequestHeaderTimeout sends a local reply, no
  DPE, no downstream_cx_protocol_error; the stream is still reset (downstream_rq_rx_reset).
"""

from __future__ import annotations

# The reasons of the ProtocolErrors connection_manager's _on_header_timeout makes: a request
# head late for request_headers_timeout, or for stream_idle_timeout (Envoy's stream exists from
# the head's first byte, so its idle timer times the head). Local replies, no codec errors.
HEADER_TIMEOUT = "request header timeout"
HEAD_IDLE_TIMEOUT = "stream timeout"
HEAD_TIMEOUTS = (HEADER_TIMEOUT, HEAD_IDLE_TIMEOUT)


def closing(conn, remote: bool) -> None:
    """`conn` (an HttpConnection, still open) is about to end: closed by the client
    (`remote`) or by Baton. With a request in flight, destroy_active_rq and its twin
    (Envoy's doConnectionClose counts them when it decides, before any delayed close)."""
    streams = conn.streams
    if conn.closed or not streams:      # (the usual close: its last stream done)
        return
    live = 0
    for stream in streams.values():
        if not stream.done:
            live += 1
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
    (timed out: Baton's transport.abort(), no `exc`; or the client's reset), or a client's
    reset or error before Baton closed. Nothing for a connection closed before (counted
    then) or moved."""
    if conn.destroy_counted:
        return
    if conn.lingering is not None and exc is None:
        conn.worker.stats.counters[conn.hcm.stat_cx_delayed_close_timeout] += 1
        connection_ends(conn, False)
    elif conn.lingering is not None:
        linger_ended_by_client(conn)
    elif not conn.closed:
        client_closed(conn)


def linger_ended_by_client(conn) -> None:
    """The client's FIN or RST ended `conn`'s delayed close before its timer: a remote close,
    as Envoy counts a client's close while it holds its FIN."""
    connection_ends(conn, True)


def stream_cut(stream) -> None:
    """`stream` was in flight when its connection ended (an express exchange is handed back
    to the full path first, as its reset would: express.py)."""
    if hasattr(stream, "_hand_back"):
        if stream.done and stream.handed_to is None:
            return
        stream = stream._hand_back()
    # A response forwarded from the previous generation (inflight.py's ForwardedResponse)
    # has no StreamInfo here (info None): its exchange is logged where it runs, told by its
    # reset. (getattr: whatever else a connection's stream table may hold.)
    info = getattr(stream, "info", None)
    if info is not None and not stream.done:
        info.response_flags.append("DC")            # (counted by closing())


def last_stream_done(conn, stream) -> bool:
    """HTTP/1.1: `conn` closes after its last response. Envoy 1.40 closes at once (a local
    close, ConnectionCloseType::FlushWrite) when that request was read whole before the
    response ended, for nothing is left unread to race the close, or when the response is an
    HTTP/1.0 body the close delimits, whose end is the FIN (doEndStream's skip_delay_close
    and http_10_sans_cl); else its delayed close waits for the client (transport_lost and
    eof_received count what ends it). True when the close is that one (HttpConnection.close's
    flush_only). Measured with the real Envoy: a direct response or local reply to a whole GET
    (answered while its head is read: `conn.starting`) and a codec error's reply wait; an
    upstream's response to a whole request and an HTTP/1.0 response without a length do not;
    nor does a response the idle timeout's drain_timeout found in flight (`idle_drain_closing`:
    Envoy's onDrainTimeout made the connection Closing, whose close is the delayed one)."""
    if conn.codec.multiplexed:
        return False
    # An express exchange (express.py: info None) is never a codec error, nor HTTP/1.0.
    info = stream.info
    if info is not None:
        if "DPE" in info.response_flags or stream.request is None:
            return False        # a codec error's reply, a request-headers timeout's 408
        if not stream.request_complete:
            # Its response ended before its request (answered before the body came): Envoy's
            # doEndStream resets the stream, counted as a request reset.
            conn.worker.stats.counters[conn.hcm.stat_rq_rx_reset] += 1
        if info.protocol == "HTTP/1.0" and (info.response is None or
                                            "content-length" not in info.response.headers):
            connection_ends(conn, False)
            return True
    if stream.request_complete and not conn.starting and not conn.idle_drain_closing:
        connection_ends(conn, False)
        return True
    return False


def protocol_error(conn, event) -> None:
    """`conn`'s codec reported `event` (a ProtocolError): downstream_cx_protocol_error, but
    for a head's timeout."""
    if event.reason not in HEAD_TIMEOUTS:
        conn.worker.stats.counters[conn.hcm.stat_cx_protocol_error] += 1


def codec_error(stream, event=None) -> None:
    """`stream` answers a request its codec refused (`event`, the ProtocolError, when there
    is one), or whose head did not come in time (no DPE then)."""
    if event is None or event.reason not in HEAD_TIMEOUTS:
        stream.info.response_flags.append("DPE")
    stream.stats[stream.hcm.stat_rq_rx_reset] += 1


def http10_refused(stream) -> None:
    """Envoy's HTTP/1.1 codec refuses HTTP/1.0 while it reads the head: a codec error whose
    stream has no request ('"- - HTTP/1.1" 426 DPE' in the default format), counted in
    downstream_cx_protocol_error."""
    info = stream.info
    info.request = info.last_request_byte = None      # (no request: REQUEST_DURATION -)
    info.protocol = "HTTP/1.1"
    stream.stats[stream.hcm.stat_cx_protocol_error] += 1
    codec_error(stream)

"""HTTP/2 connections that move to another process instead of draining by GOAWAY.

An HTTP/2 connection moves at a moment with no stream open. To reach one under load (a gRPC
channel or h2load always has requests coming), the connection stops reading new streams: its
codec leaves a HEADERS frame that would open one, and everything after it, unread
(`hold_new_streams`), while the streams already open finish. Then what the next process needs
is small and plain (h2server.py export_state): both sides' settings, the connection windows,
the highest stream id, the HPACK decoder's dynamic table (the client's encoder refers to it),
and the bytes not yet read; over TLS the record layer's state too. The client sees a pause
of one response time, no GOAWAY and no reconnect.

A connection that does not get there within HOLD_LIMIT (a long stream, or a response waiting
for a WINDOW_UPDATE that the held bytes would bring) reads the held streams after all and
drains with GOAWAY at once, as every HTTP/2 connection did before: its open streams finish
here, and the client opens its next connection to the new generation.
"""

from __future__ import annotations

from ...connection import register
from .inflight import refusal_unless

RECORD = "http2-idle"
HOLD_LIMIT = 2.0        # seconds a connection stops reading new streams to become movable


def adopt(worker, listener, fields: dict, fds: list[int], conn_id: int, channel=None):
    """Record "http2-idle": the connection goes on here with the state it had."""
    from ...codecs.http2 import Http2ServerCodec
    from .connection_manager import HttpConnection
    chain = listener.chains[fields.get("chain") or 0]
    hcm = chain.http_config
    codec = Http2ServerCodec(max_header_bytes=hcm.max_header_bytes,
                             max_headers=hcm.max_headers, **hcm.http2_options,
                             counters=worker.stats.counters)
    codec.import_state(fields["h2"])
    if fields.get("tls") is not None:
        from ..https import adopt_idle
        return adopt_idle(worker, listener, fields, fds, conn_id, channel,
                          prepare=lambda conn: conn.adopt_codec(codec))
    return HttpConnection.adopt(worker, listener, fields, fds, conn_id, channel,
                                prepare=lambda conn: conn.adopt_codec(codec))


register(RECORD, adopt, refusal_unless("HTTP2"))

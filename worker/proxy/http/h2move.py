"""HTTP/2 connections that move to another process instead of draining by GOAWAY.

An HTTP/2 connection moves at a moment with no stream open. To reach one under load (a gRPC
channel or h2load always has requests coming), the connection stops reading new streams: its
codec leaves a HEADERS frame that would open one, and everything after it, unread
(`hold_new_streams`), while the streams already open finish. Then what the next process needs
is small and plain (h2server.py export_state): both sides' settings, the connection windows,
the highest stream id, the HPACK decoder's dynamic table (the client's encoder refers to it),
and the bytes not yet read; over TLS the record layer's state too. The client sees a pause
of one response time, no GOAWAY and no reconnect.

A connection that does not get there within HOLD_LIMIT (a response waiting for a
WINDOW_UPDATE that the held bytes would bring, say) reads on and drains with GOAWAY at the end
of the move, as every HTTP/2 connection did before.
"""

from __future__ import annotations

from ...connection import register

RECORD = "http2-idle"
HOLD_LIMIT = 2.0        # seconds a connection stops reading new streams to become movable


def adopt(worker, listener, fields: dict, fds: list[int], conn_id: int, channel=None):
    """Record "http2-idle": the connection goes on here with the state it had."""
    from ...codecs.http2 import Http2ServerCodec
    from .connection_manager import HttpConnection
    chain = listener.chains[fields.get("chain") or 0]
    hcm = chain.http_config
    codec = Http2ServerCodec(max_header_bytes=hcm.max_header_bytes,
                             max_headers=hcm.max_headers, **hcm.http2_options)
    codec.import_state(fields["h2"])
    if fields.get("tls") is not None:
        from ..https import adopt_idle
        return adopt_idle(worker, listener, fields, fds, conn_id, channel,
                          prepare=lambda conn: conn.adopt_codec(codec))
    return HttpConnection.adopt(worker, listener, fields, fds, conn_id, channel,
                                prepare=lambda conn: conn.adopt_codec(codec))


def _refusal(worker, listener, fields: dict) -> str | None:
    index = fields.get("chain") or 0
    if index >= len(listener.chains) or listener.chains[index].http_config is None:
        return "no http_connection_manager at that filter chain here"
    if listener.chains[index].http_config.codec_type == "HTTP1":
        return "that filter chain speaks only HTTP/1.1 here"
    if fields.get("tls") is not None:
        from ..https import _refusal as https_refusal
        return https_refusal(worker, listener, fields)
    return None


register(RECORD, adopt, _refusal)

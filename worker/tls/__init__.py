"""Baton's own TLS record layer: OpenSSL (through the `ssl` module) does the handshake, Baton
protects the records afterwards, so a TLS session is plain values that can move with its fd.

    hello.py        ClientHello / ServerHello randoms from the cleartext start of a stream
    keylog.py       capture of the handshake's secrets through SSLContext.keylog_filename
    suites.py       the AEAD cipher suites Baton can carry on (TLS 1.3 and TLS 1.2 ECDHE)
    keyschedule.py  HKDF-Expand-Label (RFC 8446) and the TLS 1.2 PRF / key block (RFC 5246)
    records.py      record framing, content types, alerts and the layer's one error type
    protection.py   one direction's AEAD record protection (nonce, AAD, sequence number)
    layer.py        the sans-IO record layer: data, KeyUpdate, close_notify, alerts
    state.py        the layer's state as a versioned plain dict (msgpack-able), and back
    handover.py     drive SSLObject's handshake over MemoryBIOs, then hand over to the layer
    accept.py       one server-side handshake to a layer: handover, SAN checks, ssl.* counts
    server.py       a filter chain's TLS server side: the SSLContext, checks, stats
    client.py       a cluster's TLS client side (UpstreamTlsContext) and one client handshake
    transport.py    an asyncio transport over a socket and the layer (HTTPS)
    ktls.py         whether the kernel offers kTLS (detected, never assumed)

Nothing here does IO except transport.py (a socket, on the worker's loop), keylog.py, which
reads its own pipe, and ktls.py, which reads /proc.
"""

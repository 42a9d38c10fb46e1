"""Reading one HTTP/1.1 answer off a raw socket to its end, not to the connection's close: an
answer made before its request was read whole (a direct response to a GET, a local reply, a
codec error's reply) is followed by the proxy's delayed close, which holds its FIN for
delayed_close_timeout (a second by default, in Envoy 1.40 and in Baton)."""

from __future__ import annotations

import socket


def whole(data: bytes) -> bool:
    """`data` is a response head and all of its content-length'd body."""
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def read_answer(sock: socket.socket) -> bytes:
    """What `sock` reads until its answer is whole (see whole()) or the peer closes."""
    data = b""
    while not whole(data) and (chunk := sock.recv(65536)):
        data += chunk
    return data

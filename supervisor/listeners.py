"""Binding the listening sockets. Only the master binds, once, and keeps them for its life.

One socket per listener, shared by every worker: closing a SO_REUSEPORT socket drops its accept
queue with resets, so a per-worker socket would lose its queue whenever its worker dies.
SO_REUSEPORT is still set when the config asks (Envoy's enable_reuse_port, default true), so
that another process may bind beside us during an upgrade.
"""

from __future__ import annotations

import socket

from ..tproxy.original_dst import make_transparent

BACKLOG = 4096


class BindError(Exception):
    pass


def bind_listener(spec: dict) -> socket.socket:
    family = socket.AF_INET6 if ":" in spec["address"] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spec.get("reuse_port", True):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if spec.get("transparent"):
            make_transparent(sock)
        sock.bind((spec["address"], spec["port"]))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(f"listener '{spec['name']}': cannot bind {spec['address']}:{spec['port']}: "
                        f"{exc.strerror}") from None
    return sock


def bind_all(specs) -> dict[str, socket.socket]:
    bound: dict[str, socket.socket] = {}
    try:
        for spec in specs:
            bound[spec["name"]] = bind_listener(spec)
    except BindError:
        for sock in bound.values():
            sock.close()
        raise
    return bound

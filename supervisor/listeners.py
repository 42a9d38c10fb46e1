"""Binding the listening sockets. Only the master binds, once, and keeps them for its life.

One socket per listener, shared by every worker: closing a SO_REUSEPORT socket drops its accept
queue with resets, so a per-worker socket would lose its queue whenever its worker dies.
SO_REUSEPORT is still set when the config asks (Envoy's enable_reuse_port, default true), so
that another process may bind beside us during an upgrade.

UDP listeners (protocol "udp", xds/udp.py) are one datagram socket each too, for the same
reason and one more: a UDP session's datagrams must all reach the worker that holds the
session. One socket per worker in a SO_REUSEPORT group would let the kernel choose the worker
by a hash of the group's size, which changes whenever a worker's socket closes (a crash, a
recycle) or a reload runs another number of workers, and every established session would then
land on a worker that does not know it. With one socket, one worker of a generation reads it
(worker/proxy/udp_proxy.py says which, and how the reading moves between processes), and
datagrams that arrive while no worker reads wait in the socket's receive buffer.
"""

from __future__ import annotations

import socket

from ..tproxy.original_dst import make_transparent

BACKLOG = 4096
UDP_RCVBUF = 4 << 20         # asked for; the kernel caps it at net.core.rmem_max


class BindError(Exception):
    pass


def is_udp(spec: dict) -> bool:
    return spec.get("protocol") == "udp"


def listener_key(spec: dict) -> tuple:
    """What identifies a listening socket between generations: its address, and its protocol
    (a TCP and a UDP listener may share a port)."""
    return (spec["address"], spec["port"], "udp") if is_udp(spec) else (spec["address"], spec["port"])


def bind_listener(spec: dict) -> socket.socket:
    family = socket.AF_INET6 if ":" in spec["address"] else socket.AF_INET
    udp = is_udp(spec)
    sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        if not udp:     # (for UDP it would let another socket bind the same address)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spec.get("reuse_port", True):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if spec.get("transparent"):
            make_transparent(sock)
        if udp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        sock.bind((spec["address"], spec["port"]))
        if not udp:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(f"listener '{spec['name']}': cannot bind {spec['address']}:{spec['port']}"
                        f"{'/udp' if udp else ''}: "
                        f"{exc.strerror}") from None
    return sock


def bind_all(specs) -> dict[str, socket.socket]:
    bound: dict[str, socket.socket] = {}
    try:
        for spec in specs:
            if spec.get("bind_to_port") is False:     # no socket (use_original_dst target)
                continue
            bound[spec["name"]] = bind_listener(spec)
    except BindError:
        for sock in bound.values():
            sock.close()
        raise
    return bound

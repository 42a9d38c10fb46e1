"""The original destination of an intercepted connection (Envoy's original_dst listener filter).

- REDIRECT (iptables/nft nat): the kernel rewrote the destination to our capture port;
  conntrack remembers the original, which SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST
  (IPv6) return as a sockaddr. No capability is needed.
- TPROXY: nothing was rewritten; the listener is IP_TRANSPARENT and the accepted socket's own
  local address *is* the original destination.

A connection that was not redirected has a conntrack entry without NAT, so SO_ORIGINAL_DST
simply returns where it was sent: the capture port itself. Callers must treat "our own
listener" as "no original destination" (see tcp_proxy's loop guard).
"""

from __future__ import annotations

import socket
import struct

SO_ORIGINAL_DST = 80          # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80     # linux/netfilter_ipv6/ip6_tables.h
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75


def original_destination(sock: socket.socket, transparent: bool) -> tuple[str, int] | None:
    """(address, port) the client dialled, or None when the kernel cannot say."""
    if transparent:
        return sock.getsockname()[:2]
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    except OSError:
        return None          # no conntrack entry (e.g. nf_conntrack not loaded)


def make_transparent(sock: socket.socket) -> None:
    """IP_TRANSPARENT before bind: accept connections addressed to any IP (needs CAP_NET_ADMIN)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)

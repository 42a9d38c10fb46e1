"""A worker's side of one listener: accepting on the master's socket and starting connections.

Every worker accepts on the same listening socket (the master's, inherited at fork), so the
kernel's accept queue is shared: when a worker dies, the connections waiting in the queue are
accepted by the others instead of being reset with the dead worker's queue.
"""

from __future__ import annotations

import errno
import logging
import socket

from .proxy.pipes import pipe_capacity_for

log = logging.getLogger("baton.listener")

ACCEPT_BATCH = 64            # accepts per wakeup, so one busy listener cannot starve the loop
EMFILE_BACKOFF = 0.1         # out of descriptors: stop accepting briefly rather than spin


class Listener:
    __slots__ = ("worker", "loop", "name", "sock", "fd", "family", "tcp_proxy", "pipe_capacity",
                 "accepting", "stat_cx_total", "stat_cx_active", "tcp_stat_cx_total",
                 "tcp_stat_no_route", "tcp_stat_rx_bytes", "tcp_stat_tx_bytes",
                 "tcp_stat_idle_timeout", "tcp_stat_rx_buffered", "tcp_stat_tx_buffered", "spec",
                 "address", "port", "transparent", "original_dst", "use_original_dst")

    def __init__(self, worker, spec: dict, fd: int):
        self.worker = worker
        self.loop = worker.loop
        self.fd = fd
        self.family = socket.AF_INET6 if ":" in spec["address"] else socket.AF_INET
        self.sock = socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
        self.sock.setblocking(False)
        self.accepting = False
        self.update(spec)

    def update(self, spec: dict) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.address, self.port = spec["address"], spec["port"]
        self.transparent = spec.get("transparent", False)
        self.original_dst = spec.get("original_dst", False)
        self.use_original_dst = spec.get("use_original_dst", False)
        self.tcp_proxy = spec["tcp_proxy"]
        self.pipe_capacity = pipe_capacity_for(spec.get("buffer_limit", 1 << 20))
        scope = f"listener.{spec['stat_name']}."
        self.stat_cx_total = scope + "downstream_cx_total"
        self.stat_cx_active = scope + "downstream_cx_active"
        tcp = f"tcp.{self.tcp_proxy['stat_prefix']}."
        self.tcp_stat_cx_total = tcp + "downstream_cx_total"
        self.tcp_stat_no_route = tcp + "downstream_cx_no_route"
        self.tcp_stat_rx_bytes = tcp + "downstream_cx_rx_bytes_total"
        self.tcp_stat_tx_bytes = tcp + "downstream_cx_tx_bytes_total"
        self.tcp_stat_idle_timeout = tcp + "idle_timeout"
        self.tcp_stat_rx_buffered = tcp + "downstream_cx_rx_bytes_buffered"
        self.tcp_stat_tx_buffered = tcp + "downstream_cx_tx_bytes_buffered"

    def start(self) -> None:
        if not self.accepting:
            self.accepting = True
            self.loop.add_reader(self.fd, self._on_acceptable)

    def stop(self) -> None:
        if self.accepting:
            self.accepting = False
            self.loop.remove_reader(self.fd)

    def close(self) -> None:
        """Stop accepting and release this worker's copy of the socket (the master's and
        other workers' copies keep it open)."""
        self.stop()
        self.sock.close()

    def _on_acceptable(self) -> None:
        accept = self.sock._accept          # raw (fd, addr): no socket object we'd discard
        family = self.family
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("listener %s: accept: %s; pausing %.1fs", self.name, exc, EMFILE_BACKOFF)
                    self.stop()
                    self.loop.call_later(EMFILE_BACKOFF, self._resume)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            client = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.worker.new_connection(self, client, addr)

    def _resume(self) -> None:
        if not self.worker.draining:
            self.start()

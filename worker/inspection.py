"""Listener filters that look before a filter chain is chosen: tls_inspector and
http_inspector (Envoy's names), and Baton's rpc_inspector (Dubbo and SOFA Bolt), on
connections whose listener has them or matches chains.

The first bytes are *read* (not peeked: a peek leaves the socket readable and would spin the
loop) into a small buffer, classified by the sans-IO sniffer (worker/codecs/sniff.py), and then
handed to the chosen chain's connection as the first bytes to send upstream. A client that
says nothing — a server-speaks-first protocol such as SMTP or MySQL — is decided at
`listener_filters_timeout`: passed on as raw bytes when `continue_on_listener_filters_timeout`
is set, closed otherwise (Envoy's defaults: 15 s, close).
"""

from __future__ import annotations

import logging

from .codecs.sniff import MAX_SNIFF, RAW, sniff
from .connection import Connection, Lifecycle
from .proxy.chains import select

log = logging.getLogger("baton.inspection")

# The listener filter that recognises each cleartext protocol (http_inspector the rest).
_INSPECTOR_OF = {"dubbo": "rpc", "bolt": "rpc"}


class Inspection(Connection):
    """A connection whose chain is not chosen yet. It never moves (readiness NEVER): it
    decides within its timeout, and the connection it becomes may move then."""

    kind = "inspection"
    __slots__ = ("worker", "loop", "listener", "client", "peer", "original", "id", "buf", "timer",
                 "state", "chain", "inspectors", "__weakref__")

    def __init__(self, worker, listener, client, peer, original, conn_id: int):
        self.worker = worker
        self.loop = worker.loop
        self.listener = listener
        self.client = client
        self.peer = peer
        self.original = original
        self.id = conn_id
        self.buf = bytearray()
        self.state = Lifecycle.INSPECTING
        self.chain = None
        self.timer = None
        self.inspectors = listener.inspectors
        if listener.inspectors_disabled:
            try:
                port = (original or client.getsockname())[1]
            except OSError:
                port = 0
            self.inspectors = listener.inspectors_for(port)
        if not self.inspectors:
            # Chains chosen by addresses and ports only: nothing to read first (a server that
            # speaks first must not wait for the client), as in Envoy.
            self.loop.call_soon(self._decide_now)
            return
        self.loop.add_reader(client.fileno(), self._on_readable)
        if listener.sniff_timeout:         # None: wait for the inspectors (Envoy's 0s)
            self.timer = self.loop.call_later(listener.sniff_timeout, self._on_timeout)

    def _decide_now(self) -> None:
        if self.state is Lifecycle.INSPECTING:
            self._decide(RAW, eof=False, read=False)

    def _on_readable(self) -> None:
        try:
            data = self.client.recv(MAX_SNIFF - len(self.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:                                  # the client is done before we decided
            self._decide(sniff(bytes(self.buf)) or RAW, eof=True)
            return
        self.buf += data
        result = sniff(bytes(self.buf))
        if result is None and len(self.buf) >= MAX_SNIFF:
            result = RAW
        if result is not None:
            self._decide(result, eof=False)

    def _on_timeout(self) -> None:
        self.timer = None
        if self.listener.sniff_continue:
            self._decide(sniff(bytes(self.buf)) or RAW, eof=False)
        else:
            log.debug("connection %d: nothing recognisable within %.1fs; closing", self.id,
                      self.listener.sniff_timeout)
            self.close()

    def _decide(self, result, eof: bool, read: bool = True) -> None:
        self._stop(read)
        # An inspector filter_disabled for this port saw nothing: what only it would have
        # recognised is plain bytes.
        if result.transport == "tls" and "tls" not in self.inspectors:
            result = RAW
        elif result.transport != "tls" and result.protocols and \
                _INSPECTOR_OF.get(result.protocols[0], "http") not in self.inspectors:
            result = RAW
        try:
            local = self.original or self.client.getsockname()
        except OSError:                       # the client is gone already
            self.close()
            return
        if self.listener.chain_matcher is not None:     # filter_chain_matcher: by name
            from .proxy.filter_chain_matcher import connection_values, select_chain
            chain = select_chain(self.listener.chain_matcher, self.listener.chains,
                                 connection_values(result.transport, result.protocols,
                                                   result.server_name, local, self.peer))
        else:
            chain = select(self.listener.chains, local[1], result.transport, result.protocols,
                           result.server_name, destination_ip=local[0], source=self.peer)
        stats = self.worker.stats
        if chain is None:
            stats.counters[self.listener.stat_no_chain] += 1
            if self.listener.access_logs:
                from .connection_log import log_unmatched
                log_unmatched(self.listener, self.peer, local, self.id, result.server_name)
            self.close()
            return
        self._forget()
        self.worker.start_connection(self.listener, chain, self.client, self.peer, self.original,
                                     (bytes(self.buf), eof) if read else None, self.id)

    def _stop(self, read: bool = True) -> None:
        if read and self.inspectors:
            self.loop.remove_reader(self.client.fileno())
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _forget(self) -> None:
        self.worker.connections.pop(self.id, None)

    def close(self) -> None:
        if self.state is Lifecycle.CLOSED:
            return
        self.state = Lifecycle.CLOSED
        self._stop()
        self.client.close()
        self.worker.stats.gauges[self.listener.stat_cx_active] -= 1
        self.worker.connection_closed(self)

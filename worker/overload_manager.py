"""A worker's overload manager: the thin wiring around worker/overload.py.

Each worker evaluates its own monitors on its own timer (every refresh_interval) and applies
the resulting action states to itself, as each Envoy worker thread reacts to the overload
manager's callbacks. What the data path reads is plain attributes, so a worker without an
overload_manager pays one attribute read per accept batch and per request:

    screen_accept        None, or a callable(listener) -> bool run on every accepted socket
                         (global connection limit, reject_incoming_connections,
                         load shed point tcp_listener_accept): False = close it at once
    holding              stop_accepting_connections is saturated: listeners stop reading
                         their accept queue (connections wait in the kernel backlog, as Envoy
                         disables its listeners)
    shedding             stop_accepting_requests or the decode-headers load shed point is
                         active: rejects_request() may answer 503 "envoy overloaded"
    disable_keepalive    the disable_http_keepalive value: closes_connection() may end the
                         connection after the response
    http_active          any of the HTTP actions is active (the express lane steps aside)

reset_high_memory_stream touches nothing on the data path: when its value changes, the
refresh resets the streams holding the most memory (worker/overload_reset.py).
"""

from __future__ import annotations

import logging
import random

from .connection_table import ConnectionTable
from .heap_shrinker import SHRINK_INTERVAL, release_free_memory
from .overload import Evaluator, fires
from .overload_monitors import DownstreamConnections, make_monitor
from .overload_reset import RESET_COUNT, reset_high_memory_streams

log = logging.getLogger("baton.overload")

STOP_ACCEPTING_CONNECTIONS = "envoy.overload_actions.stop_accepting_connections"
REJECT_INCOMING_CONNECTIONS = "envoy.overload_actions.reject_incoming_connections"
DISABLE_HTTP_KEEPALIVE = "envoy.overload_actions.disable_http_keepalive"
STOP_ACCEPTING_REQUESTS = "envoy.overload_actions.stop_accepting_requests"
SHRINK_HEAP = "envoy.overload_actions.shrink_heap"
RESET_HIGH_MEMORY_STREAM = "envoy.overload_actions.reset_high_memory_stream"
TCP_LISTENER_ACCEPT = "envoy.load_shed_points.tcp_listener_accept"
HCM_DECODE_HEADERS = "envoy.load_shed_points.http_connection_manager_decode_headers"

OVERLOADED_BODY = "envoy overloaded"


class OverloadManager:
    __slots__ = ("worker", "evaluator", "monitors", "refresh_interval", "timer", "limit",
                 "limit_name", "screen_accept", "holding", "shedding", "stop_requests",
                 "decode_point", "disable_keepalive", "http_active", "reject_fraction",
                 "accept_point", "random", "failing", "shrink_timer", "account_bitshift")

    def __init__(self, worker, config: dict | None, rand=random.random):
        self.worker = worker
        self.random = rand
        self.evaluator = None
        self.monitors = {}
        self.timer = self.shrink_timer = None
        self.limit = self.limit_name = None
        self.screen_accept = None
        self.holding = self.shedding = self.http_active = False
        self.stop_requests = self.decode_point = self.disable_keepalive = 0.0
        self.reject_fraction = self.accept_point = 0.0
        self.refresh_interval = None
        self.failing: set[str] = set()      # monitors whose last update failed (logged once)
        # Envoy's workers have this counter whether or not the action is configured.
        worker.stats.counters.setdefault(RESET_COUNT, 0)
        self.account_bitshift = None        # reset_high_memory_stream tracks from 2^this bytes
        if not config:
            return
        power = config.get("minimum_account_to_track_power_of_two")
        if power:
            self.account_bitshift = power - 1     # Envoy's WatermarkBufferFactory bitshift
        stats = worker.stats
        self.evaluator = Evaluator(config, stats.gauges, stats.counters)
        self.refresh_interval = config["refresh_interval"]
        self.monitors = {spec["name"]: make_monitor(spec, lambda: ConnectionTable(worker.id))
                         for spec in config["monitors"]}
        for name, monitor in self.monitors.items():
            if isinstance(monitor, DownstreamConnections):
                self.limit, self.limit_name = monitor, name
        self._apply()
        # The first evaluation runs as soon as the worker's loop turns, after its listeners
        # are installed; then every refresh_interval.
        self.timer = worker.loop.call_soon(self._refresh)
        if any(a["name"] == SHRINK_HEAP for a in config["actions"]):
            stats.counters.setdefault(f"overload.{SHRINK_HEAP}.shrink_count", 0)
            self.shrink_timer = worker.loop.call_later(SHRINK_INTERVAL, self._shrink)

    # -- the timer ------------------------------------------------------------------------

    def _refresh(self) -> None:
        self.timer = self.worker.loop.call_later(self.refresh_interval, self._refresh)
        worker = self.worker
        measured = {}
        for name, monitor in self.monitors.items():
            try:
                measured[name] = monitor.pressure(worker)
            except Exception as exc:  # noqa: BLE001 - a failed update, never a dead worker
                measured[name] = None
                if name not in self.failing:
                    self.failing.add(name)
                    log.warning("overload: worker %d: resource monitor %s failed to update: %s",
                                worker.id, name, exc)
            else:
                self.failing.discard(name)
        changed = self.evaluator.update(measured)
        if changed:
            self._apply()
            if RESET_HIGH_MEMORY_STREAM in changed:
                # Envoy calls the action's worker callback on each change of its value.
                reset_high_memory_streams(worker, self.evaluator.value(RESET_HIGH_MEMORY_STREAM),
                                          self.account_bitshift)
        self._declare_stats()

    def _shrink(self) -> None:
        """Envoy's heap shrinker: every 10 s, while shrink_heap is saturated."""
        self.shrink_timer = self.worker.loop.call_later(SHRINK_INTERVAL, self._shrink)
        if self.evaluator.value(SHRINK_HEAP) >= 1.0:
            release_free_memory()
            self.worker.stats.counters[f"overload.{SHRINK_HEAP}.shrink_count"] += 1

    def stop(self) -> None:
        for timer in (self.timer, self.shrink_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.shrink_timer = None
        if self.limit is not None:
            self.limit.table.release()

    def _apply(self) -> None:
        value = self.evaluator.value
        self.stop_requests = value(STOP_ACCEPTING_REQUESTS)
        self.decode_point = value(HCM_DECODE_HEADERS)
        self.disable_keepalive = value(DISABLE_HTTP_KEEPALIVE)
        self.shedding = bool(self.stop_requests or self.decode_point)
        self.http_active = bool(self.shedding or self.disable_keepalive)
        self.reject_fraction = value(REJECT_INCOMING_CONNECTIONS)
        self.accept_point = value(TCP_LISTENER_ACCEPT)
        screens = self.limit is not None or self.reject_fraction or self.accept_point
        self.screen_accept = self._screen if screens else None
        holding = value(STOP_ACCEPTING_CONNECTIONS) >= 1.0
        if holding != self.holding:
            self.holding = holding
            log.warning("overload: worker %d %s accepting connections", self.worker.id,
                        "stops" if holding else "resumes")
            for listener in self.worker.listeners.values():
                listener.hold(holding)

    def _declare_stats(self) -> None:
        """Envoy's overload counters of every listener and HTTP connection manager exist at 0
        (listeners come and go with xDS, so this runs on each refresh)."""
        counters = self.worker.stats.counters
        for listener in self.worker.listeners.values():
            counters.setdefault(listener.stat_global_cx_overflow, 0)
            counters.setdefault(listener.stat_overload_reject, 0)
            for chain in listener.chains:
                hcm = chain.http_config
                if hcm is not None:
                    counters.setdefault(_rq_overload_close(hcm), 0)
                    counters.setdefault(_cx_overload_disable_keepalive(hcm), 0)

    # -- hooks on the data path -----------------------------------------------------------

    def _screen(self, listener) -> bool:
        """An accepted socket: keep it (True) or have it closed at once (False), in Envoy's
        order: the global connection limit, the load shed point, reject_incoming_connections."""
        counters = self.worker.stats.counters
        limit = self.limit
        if limit is not None and not listener.ignore_global_limit and not limit.admits(self.worker):
            counters[listener.stat_global_cx_overflow] += 1
            self.evaluator.failed(self.limit_name)
            return False
        if (self.accept_point and fires(self.accept_point, self.random())) or (
                self.reject_fraction and fires(self.reject_fraction, self.random())):
            counters[listener.stat_overload_reject] += 1
            if limit is not None and not listener.ignore_global_limit:
                limit.table.publish(len(self.worker.connections))   # admits() counted it
            return False
        return True

    def rejects_request(self, stream) -> bool:
        """stop_accepting_requests (and the decode-headers load shed point): answer the
        request that just started with Envoy's 503 local reply instead of serving it."""
        if not ((self.stop_requests and fires(self.stop_requests, self.random())) or (
                self.decode_point and fires(self.decode_point, self.random()))):
            return False
        stream.stats[_rq_overload_close(stream.hcm)] += 1
        stream.info.response_flags.append("OM")
        stream.local_reply(503, OVERLOADED_BODY, "overload")
        return True

    def closes_connection(self, stream) -> bool:
        """disable_http_keepalive: whether the response being sent ends its connection
        (HTTP/1.1 `connection: close`, HTTP/2 GOAWAY); decided once per connection."""
        value = self.disable_keepalive
        conn = stream.conn
        if not value or conn.draining or not fires(value, self.random()):
            return False
        conn.draining = True
        stream.stats[_cx_overload_disable_keepalive(stream.hcm)] += 1
        return True


def _rq_overload_close(hcm) -> str:
    return f"http.{hcm.stat_prefix}.downstream_rq_overload_close"


def _cx_overload_disable_keepalive(hcm) -> str:
    return f"http.{hcm.stat_prefix}.downstream_cx_overload_disable_keepalive"

"""Outlier detection (passive health): eject hosts that fail, return them after a while.

One OutlierDetector per cluster per worker, as configured by the snapshot's
"outlier_detection" dict (xds/cluster_features.py). The router reports every upstream
outcome:

    detector.report(host, 503)              an HTTP status from the upstream
    detector.report(host, "connect_failure" | "timeout" | "reset")    local-origin failures
    detector.success(host)                  shorthand for report(host, 200)

Envoy's rules, which this follows:
- consecutive_gateway_failure counts 502/503/504; any other status resets it.
- consecutive_5xx counts every 5xx; any non-5xx resets it.
- Local-origin failures: without split_external_local_origin_errors they count as the
  statuses Envoy maps them to (connect failure and reset: 503, timeout: 504), so they feed
  both counters above. With it, they only feed consecutive_local_origin_failure, and an
  upstream status (the connection worked) resets that one.
- Reaching a threshold is "detected" (ejections_detected_*). The ejection is enforced with
  probability enforcing_*%, and only if (ejected + 1) / hosts stays within
  max_ejection_percent, or, with always_eject_one_host, when nobody is ejected yet; otherwise
  ejections_overflow.
- Ejected for base_ejection_time x (times ejected in a row), capped at max_ejection_time, plus
  a random jitter up to max_ejection_time_jitter. The multiplier goes back down by one for
  every base_ejection_time a host stays in service.
- Every `interval` the sweep returns hosts whose time is up, and runs the success-rate and
  failure-percentage detectors over the requests of the interval that just ended.

Pure logic around an injected clock: `sweep()` is what the interval timer calls; the timer
itself (`start(loop)`) exists only in a worker.
"""

from __future__ import annotations

import math
import random
import time

GATEWAY_ERRORS = (502, 503, 504)
LOCAL_ORIGIN_STATUS = {"connect_failure": 503, "reset": 503, "timeout": 504}

# Envoy's stat names under cluster.<name>.outlier_detection. (ejections_active is a gauge).
_KINDS = ("consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure",
          "success_rate", "local_origin_success_rate", "failure_percentage",
          "failure_percentage_local_origin")
STAT_KEYS = (("outlier_detection.ejections_active", "outlier_detection.ejections_enforced_total",
              "outlier_detection.ejections_overflow", "outlier_detection.ejections_total")
             + tuple(f"outlier_detection.ejections_{what}_{kind}"
                     for kind in _KINDS for what in ("enforced", "detected")))
GAUGE_KEYS = frozenset({"outlier_detection.ejections_active"})


class HostMonitor:
    """Outlier state of one host; lives on Host.outlier, so it survives endpoint updates."""

    __slots__ = ("consecutive_5xx", "consecutive_gateway", "consecutive_local",
                 "ejected_at", "eject_for", "multiplier", "last_unejected",
                 "requests", "failures", "local_requests", "local_failures")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.consecutive_local = 0
        self.ejected_at = None       # clock time of the current ejection, None when in service
        self.eject_for = 0.0
        self.multiplier = 0          # ejections in a row (Envoy's ejection time backoff)
        self.last_unejected = None
        # This interval's outcomes, for the success-rate and failure-percentage detectors.
        self.requests = 0
        self.failures = 0
        self.local_requests = 0
        self.local_failures = 0


class OutlierDetector:
    __slots__ = ("cluster", "config", "counters", "gauges", "clock", "rand", "ejected",
                 "_timer", "_stat")

    def __init__(self, cluster, config: dict, counters=None, gauges=None,
                 clock=time.monotonic, rand: random.Random | None = None):
        """`cluster`: has .hosts, .stat (key -> full stat name) and .refresh() (called after
        every ejection or return, to rebuild the balancer's view)."""
        self.cluster = cluster
        self.config = config
        self.counters = counters if counters is not None else {}
        self.gauges = gauges if gauges is not None else {}
        self.clock = clock
        self.rand = rand or random.Random()
        self.ejected = 0
        self._timer = None
        self._stat = cluster.stat

    def update(self, config: dict) -> None:
        self.config = config

    # -- reports from the data path ------------------------------------------------------

    def success(self, host) -> None:
        self.report(host, 200)

    def report(self, host, outcome) -> None:
        monitor = host.outlier
        if monitor is None:
            monitor = host.outlier = HostMonitor()
        config = self.config
        if isinstance(outcome, str):
            if config["split_external_local_origin_errors"]:
                monitor.local_requests += 1
                monitor.local_failures += 1
                monitor.consecutive_local += 1
                if monitor.consecutive_local == config["consecutive_local_origin_failure"]:
                    monitor.consecutive_local = 0
                    self._detected(host, "consecutive_local_origin_failure")
                return
            status = LOCAL_ORIGIN_STATUS[outcome]
        else:
            status = outcome
            if config["split_external_local_origin_errors"]:
                # The upstream answered: the connection (local origin) is fine.
                monitor.local_requests += 1
                monitor.consecutive_local = 0
        monitor.requests += 1
        if 500 <= status < 600:
            monitor.failures += 1
            if status in GATEWAY_ERRORS:
                monitor.consecutive_gateway += 1
                if monitor.consecutive_gateway == config["consecutive_gateway_failure"]:
                    monitor.consecutive_gateway = 0
                    self._detected(host, "consecutive_gateway_failure")
            else:
                monitor.consecutive_gateway = 0
            monitor.consecutive_5xx += 1
            if monitor.consecutive_5xx == config["consecutive_5xx"]:
                monitor.consecutive_5xx = 0
                self._detected(host, "consecutive_5xx")
        else:
            monitor.consecutive_5xx = 0
            monitor.consecutive_gateway = 0

    # -- ejection ------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        self.counters[self._stat[key]] = self.counters.get(self._stat[key], 0) + 1

    def _detected(self, host, kind: str) -> None:
        if host.ejected:
            return
        self._count(f"outlier_detection.ejections_detected_{kind}")
        config = self.config
        total = len(self.cluster.hosts)
        within = total and 100.0 * (self.ejected + 1) <= config["max_ejection_percent"] * total
        if not within and not (config["always_eject_one_host"] and self.ejected == 0):
            self._count("outlier_detection.ejections_overflow")
            return
        if kind in ("consecutive_5xx", "success_rate"):
            self._count("outlier_detection.ejections_total")     # Envoy's deprecated counter
        enforcing = config[f"enforcing_{kind}"]
        if enforcing < 100 and self.rand.random() * 100.0 >= enforcing:
            return
        self._eject(host, kind)

    def _eject(self, host, kind: str) -> None:
        config = self.config
        monitor = host.outlier
        base, cap = config["base_ejection_time"], config["max_ejection_time"]
        if base * (monitor.multiplier + 1) <= cap:
            monitor.multiplier += 1
        jitter = config["max_ejection_time_jitter"]
        monitor.eject_for = min(base * max(monitor.multiplier, 1), cap) + (
            self.rand.random() * jitter if jitter else 0.0)
        monitor.ejected_at = self.clock()
        host.ejected = True
        self.ejected += 1
        self._count("outlier_detection.ejections_enforced_total")
        self._count(f"outlier_detection.ejections_enforced_{kind}")
        self._set_active_gauge()
        self.cluster.refresh()

    def uneject(self, host) -> bool:
        """Return `host` to service (the sweep, or a passing active health check)."""
        if not host.ejected:
            return False
        host.ejected = False
        monitor = host.outlier
        monitor.ejected_at = None
        monitor.last_unejected = self.clock()
        monitor.consecutive_5xx = monitor.consecutive_gateway = monitor.consecutive_local = 0
        self.ejected -= 1
        self._set_active_gauge()
        self.cluster.refresh()
        return True

    def host_removed(self, host) -> None:
        """The cluster dropped `host` (endpoint update): it no longer counts as ejected."""
        if host.ejected:
            host.ejected = False
            self.ejected -= 1
            self._set_active_gauge()

    def _set_active_gauge(self) -> None:
        self.gauges[self._stat["outlier_detection.ejections_active"]] = self.ejected

    # -- the interval sweep --------------------------------------------------------------

    def sweep(self) -> None:
        now = self.clock()
        base = self.config["base_ejection_time"]
        for host in list(self.cluster.hosts):
            monitor = host.outlier
            if monitor is None:
                continue
            if host.ejected:
                if now - monitor.ejected_at >= monitor.eject_for:
                    self.uneject(host)
            elif monitor.multiplier and monitor.last_unejected is not None and \
                    now - monitor.last_unejected >= base:
                # In service for another base_ejection_time: forgive one ejection.
                monitor.multiplier -= 1
                monitor.last_unejected = now
        self._rate_detectors()

    def _rate_detectors(self) -> None:
        config = self.config
        split = config["split_external_local_origin_errors"]
        monitors = [(h, h.outlier) for h in self.cluster.hosts if h.outlier is not None]
        self._success_rate(monitors, "requests", "failures", "success_rate")
        self._failure_percentage(monitors, "requests", "failures", "failure_percentage")
        if split:
            self._success_rate(monitors, "local_requests", "local_failures",
                               "local_origin_success_rate")
            self._failure_percentage(monitors, "local_requests", "local_failures",
                                     "failure_percentage_local_origin")
        for _, monitor in monitors:
            monitor.requests = monitor.failures = 0
            monitor.local_requests = monitor.local_failures = 0

    def _success_rate(self, monitors, requests, failures, kind) -> None:
        """Envoy: with at least success_rate_minimum_hosts hosts that each saw
        success_rate_request_volume requests, a host whose success rate is below
        mean - stdev * (success_rate_stdev_factor / 1000) is an outlier."""
        config = self.config
        volume = config["success_rate_request_volume"]
        rates = [(h, 100.0 * (getattr(m, requests) - getattr(m, failures)) / getattr(m, requests))
                 for h, m in monitors if getattr(m, requests) >= volume and not h.ejected]
        if not rates or len(rates) < config["success_rate_minimum_hosts"]:
            return
        mean = sum(r for _, r in rates) / len(rates)
        stdev = math.sqrt(sum((r - mean) ** 2 for _, r in rates) / len(rates))
        limit = mean - stdev * config["success_rate_stdev_factor"] / 1000.0
        for host, rate in rates:
            if rate < limit:
                self._detected(host, kind)

    def _failure_percentage(self, monitors, requests, failures, kind) -> None:
        config = self.config
        volume = config["failure_percentage_request_volume"]
        rates = [(h, 100.0 * getattr(m, failures) / getattr(m, requests))
                 for h, m in monitors if getattr(m, requests) >= volume and not h.ejected]
        if not rates or len(rates) < config["failure_percentage_minimum_hosts"]:
            return
        for host, failed in rates:
            if failed >= config["failure_percentage_threshold"]:
                self._detected(host, kind)

    # -- the timer (workers only) --------------------------------------------------------

    def start(self, loop) -> None:
        if self._timer is None:
            self._timer = loop.call_later(self.config["interval"], self._on_timer, loop)

    def _on_timer(self, loop) -> None:
        self._timer = None
        try:
            self.sweep()
        finally:
            self._timer = loop.call_later(self.config["interval"], self._on_timer, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

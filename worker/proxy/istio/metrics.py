"""Istio's standard metrics, counted into the worker's Stats under labelled names.

A stat name here is Prometheus's own form, `metric{label="value",...}`, so that summing over
workers (worker/stats.py merge) keeps each label set apart and /stats/prometheus can print
the name as it is (prometheus.py). The metrics and their labels, in Istio's order (istio.io
"Istio Standard Metrics"; istio/proxy extensions/stats):

    HTTP / gRPC   istio_requests_total                      counter
                  istio_request_duration_milliseconds       histogram
                  istio_request_bytes, istio_response_bytes histogram
    TCP           istio_tcp_sent_bytes_total, istio_tcp_received_bytes_total,
                  istio_tcp_connections_opened_total, istio_tcp_connections_closed_total

A histogram is kept as one counter per bucket (`<metric>_bucket{...,le="B"}`, the
observations that fell in (previous bound, B], not cumulated: one increment per
observation), `<metric>_sum` and `<metric>_count`; prometheus.py prints the buckets cumulated,
as Prometheus wants them. The bounds are the ones Istio's bootstrap gives every istio_*
histogram (stats_config.histogram_bucket_settings).
"""

from __future__ import annotations

from bisect import bisect_left

from .workload import UNKNOWN

BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
           300000, 600000, 1800000, 3600000)
HISTOGRAMS = ("istio_request_duration_milliseconds", "istio_request_bytes",
              "istio_response_bytes")
_LE = [f"{bound:.32g}" for bound in BUCKETS] + ["+Inf"]
_WORKLOAD_LABELS = ("workload", "canonical_service", "canonical_revision", "workload_namespace",
                    "principal", "app", "version", "cluster")
_MAX_LABEL_SETS = 10_000        # a runaway cardinality resets the name cache, not the counts


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _side(prefix: str, workload, principal: str) -> list[tuple[str, str]]:
    values = (workload.workload, workload.canonical_service, workload.canonical_revision,
              workload.namespace, principal, workload.app, workload.version, workload.cluster)
    return [(f"{prefix}_{name}", value) for name, value in zip(_WORKLOAD_LABELS, values)]


def _destination(workload, principal: str, service) -> list[tuple[str, str]]:
    host, name, namespace = service
    return [("destination_workload", workload.workload),
            ("destination_workload_namespace", workload.namespace),
            ("destination_principal", principal),
            ("destination_app", workload.app),
            ("destination_version", workload.version),
            ("destination_service", host),
            ("destination_canonical_service", workload.canonical_service),
            ("destination_canonical_revision", workload.canonical_revision),
            ("destination_service_name", name),
            ("destination_service_namespace", namespace),
            ("destination_cluster", workload.cluster)]


def label_text(reporter, source, source_principal, destination, destination_principal,
               service, tail) -> str:
    """The `{...}` of a stat name. `service`: (host, name, namespace); `tail`: the labels
    after the destination's, [(name, value)]."""
    labels = [("reporter", reporter), *_side("source", source, source_principal),
              *_destination(destination, destination_principal, service), *tail]
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels) + "}"


class _Names:
    """The stat names of one label set, built once."""

    __slots__ = ("requests", "histograms", "tcp")

    def __init__(self, labels: str, tcp: bool):
        if tcp:
            self.tcp = {name: f"istio_tcp_{name}_total{labels}"
                        for name in ("sent_bytes", "received_bytes", "connections_opened",
                                     "connections_closed")}
            self.requests = self.histograms = None
            return
        self.tcp = None
        self.requests = f"istio_requests_total{labels}"
        inner = labels[:-1] + ","
        self.histograms = [
            ([f'{metric}_bucket{inner}le="{le}"}}' for le in _LE],
             f"{metric}_sum{labels}", f"{metric}_count{labels}") for metric in HISTOGRAMS]


class IstioMetrics:
    """Counts into one worker's Stats; one per filter config."""

    __slots__ = ("counters", "names")

    def __init__(self, stats):
        self.counters = stats.counters
        self.names: dict = {}

    def names_for(self, key: tuple, tcp: bool) -> _Names:
        names = self.names.get(key)
        if names is None:
            if len(self.names) >= _MAX_LABEL_SETS:
                self.names.clear()
            names = self.names[key] = _Names(label_text(*key), tcp)
        return names

    def request(self, key: tuple, duration_ms: float, request_bytes: int,
                response_bytes: int) -> None:
        """`key`: label_text's arguments, `tail` a tuple of (name, value) pairs."""
        names = self.names_for(key, tcp=False)
        counters = self.counters
        counters[names.requests] += 1
        for (buckets, total, count), value in zip(names.histograms,
                                                  (duration_ms, request_bytes, response_bytes)):
            counters[buckets[bisect_left(BUCKETS, value)]] += 1
            counters[total] += value
            counters[count] += 1

    def tcp(self, key: tuple, opened: int = 0, closed: int = 0, sent: int = 0,
            received: int = 0) -> None:
        names = self.names_for(key, tcp=True).tcp
        counters = self.counters
        for name, value in (("connections_opened", opened), ("connections_closed", closed),
                            ("sent_bytes", sent), ("received_bytes", received)):
            if value:
                counters[names[name]] += value


def service_of(cluster_metadata: dict | None, authority: str | None,
               host_fallback: bool = True) -> tuple[str, str, str]:
    """(destination_service, _name, _namespace) from an Istio cluster's metadata
    (filter_metadata.istio.services[0]: host, name, namespace), else the request's host
    (without its port) unless the host header fallback is disabled; "unknown" otherwise."""
    istio = ((cluster_metadata or {}).get("filter_metadata") or {}).get("istio") or {}
    services = istio.get("services") or ()
    if services and isinstance(services[0], dict):
        first = services[0]
        host = first.get("host") or UNKNOWN
        return host, first.get("name") or host, first.get("namespace") or UNKNOWN
    if host_fallback and authority:
        host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
        return host, host, UNKNOWN
    return UNKNOWN, UNKNOWN, UNKNOWN

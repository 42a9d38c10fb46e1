"""Istio's `io.istio.http.connect_baggage` on a terminated CONNECT: the `baggage` header of
the CONNECT (W3C baggage, `key=value` pairs joined by `,`) names the peer workload, which
Istio puts in the filter state it shares with the upstream connection; on HBONE's inbound
path that connection is the internal listener's, whose istio.stats then report that peer as
the source (istio/proxy's connect_baggage filter, WorkloadMetadataObject::fromBaggage).

Here: the filter reads the header into a Workload (`peer`); the router hands it to the
terminated CONNECT's connect (connect_tunnel.py), the internal listener keeps it for the
connection it accepts (internal_listener.py), and tcp_stats.py labels that connection's
istio_tcp_* with it. Without the filter, or without the header, the peer stays unknown.
"""

from __future__ import annotations

from ..http.filter import FilterFactory, StreamFilter, register
from .workload import UNKNOWN, Workload

NAME = "istio.connect_baggage"
# The baggage keys that name the workload, by kind (Istio writes one of them).
_WORKLOAD_KEYS = ("k8s.pod.name", "k8s.deployment.name", "k8s.job.name", "k8s.cronjob.name")


def workload_from_baggage(value: str) -> Workload:
    """`k8s.cluster.name=c,k8s.namespace.name=ns,k8s.deployment.name=w,service.name=s,
    service.version=v,app.name=a,app.version=b` -> Workload; what is missing is unknown."""
    fields: dict = {}
    for item in value.split(","):
        key, _, text = item.partition("=")
        fields[key.strip()] = text.split(";", 1)[0].strip()    # (a member's ;properties)
    workload = next((fields[k] for k in _WORKLOAD_KEYS if fields.get(k)), "")
    return Workload(workload=workload or UNKNOWN,
                    namespace=fields.get("k8s.namespace.name") or UNKNOWN,
                    app=fields.get("app.name") or UNKNOWN,
                    version=fields.get("app.version") or UNKNOWN,
                    canonical_service=fields.get("service.name") or UNKNOWN,
                    canonical_revision=fields.get("service.version") or UNKNOWN,
                    cluster=fields.get("k8s.cluster.name") or UNKNOWN)


@register(NAME)
class ConnectBaggageFactory(FilterFactory):
    def create(self, stream):
        return ConnectBaggageFilter(stream)


class ConnectBaggageFilter(StreamFilter):
    __slots__ = ("peer",)

    def __init__(self, stream):
        super().__init__(stream)
        self.peer = None

    def on_request_headers(self, request, end_stream: bool):
        value = request.headers.get("baggage")
        if value:
            self.peer = workload_from_baggage(value)
        return None


def baggage_peer(stream) -> Workload | None:
    """The peer the stream's connect_baggage read, or None (no filter, no header)."""
    for stream_filter in stream.filters:
        if isinstance(stream_filter, ConnectBaggageFilter):
            return stream_filter.peer
    return None

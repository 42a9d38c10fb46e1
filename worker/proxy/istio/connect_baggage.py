"""Istio's `io.istio.http.connect_baggage` on a terminated CONNECT: the `baggage` header of
the CONNECT (W3C baggage, `key=value` pairs joined by `,`) names the peer workload, which
Istio puts in the filter state it shares with the upstream connection; on HBONE's inbound
path that connection is the internal listener's, whose istio.stats then report that peer as
the source (istio/proxy's connect_baggage filter, WorkloadMetadataObject::fromBaggage).

Here: the filter reads the header into a Workload (`peer`); the router hands it to the
terminated CONNECT's connect (connect_tunnel.py), the internal listener keeps it for the
connection it accepts (internal_listener.py), and tcp_stats.py labels that connection's
istio_tcp_* with it. Without the filter, or without the header, the peer stays unknown.

With `propagate` (istio/proxy's filter of that config: on the originating side, a waypoint's
connection manager in front of the tunnel) the filter writes instead of reading: the
downstream peer Istio keeps as `wasm.downstream_peer` (here: what an earlier HTTP metadata
exchange of the stream read, else what the connecting side shared with this internal
connection, a terminated CONNECT's baggage) goes upstream as one more `baggage` header, in
WorkloadMetadataObject::baggage()'s form of that istio/proxy release:

    k8s.cluster.name=C,k8s.namespace.name=NS,k8s.<kind>.name=W,service.name=S,
    service.version=V,app.name=A,app.version=B

(every key, an unknown value empty; <kind> pod, deployment, job or cronjob, pod when not
known). No peer known: no header.
"""

from __future__ import annotations

from ..http.filter import FilterFactory, StreamFilter, register
from .workload import UNKNOWN, Workload

NAME = "istio.connect_baggage"
# The workload kinds baggage names a workload by (k8s.<kind>.name; Istio writes one of them).
KINDS = ("pod", "deployment", "job", "cronjob")
_WORKLOAD_KEYS = tuple(f"k8s.{kind}.name" for kind in KINDS)


class KindedWorkload(Workload):
    """A Workload with the kind baggage names it by: no metric label shows the kind, so it
    rides as an attribute (equal and hashed as the plain Workload)."""

    kind = "pod"


def with_kind(workload: Workload, kind: str) -> Workload:
    peer = KindedWorkload(*workload)
    peer.kind = kind if kind in KINDS else "pod"
    return peer


def owner_kind(owner, workload) -> str:
    """The kind an Istio OWNER names ("kubernetes://apis/apps/v1/namespaces/ns/deployments/w"
    -> "deployment"), pod otherwise, as istio/proxy parses it for the flat node."""
    if not isinstance(owner, str) or not isinstance(workload, str) or \
            len(owner) <= len(workload) + 2:
        return "pod"
    rest = owner[:len(owner) - len(workload) - 2]
    kind = rest[rest.rfind("/") + 1:]
    return kind if kind in KINDS else "pod"


def workload_from_baggage(value: str) -> Workload:
    """`k8s.cluster.name=c,k8s.namespace.name=ns,k8s.deployment.name=w,service.name=s,
    service.version=v,app.name=a,app.version=b` -> Workload (with the kind it was named by);
    what is missing is unknown."""
    fields: dict = {}
    for item in value.split(","):
        key, _, text = item.partition("=")
        fields[key.strip()] = text.split(";", 1)[0].strip()    # (a member's ;properties)
    key = next((k for k in _WORKLOAD_KEYS if fields.get(k)), None)
    workload = fields[key] if key else ""
    peer = Workload(workload=workload or UNKNOWN,
                    namespace=fields.get("k8s.namespace.name") or UNKNOWN,
                    app=fields.get("app.name") or UNKNOWN,
                    version=fields.get("app.version") or UNKNOWN,
                    canonical_service=fields.get("service.name") or UNKNOWN,
                    canonical_revision=fields.get("service.version") or UNKNOWN,
                    cluster=fields.get("k8s.cluster.name") or UNKNOWN)
    return with_kind(peer, key.split(".")[1] if key else "pod")


def baggage_of(peer: Workload) -> str:
    """The baggage istio/proxy's propagating filter writes for `peer` (module docstring)."""
    def text(value):
        return "" if value == UNKNOWN else value
    return (f"k8s.cluster.name={text(peer.cluster)},k8s.namespace.name={text(peer.namespace)},"
            f"k8s.{getattr(peer, 'kind', 'pod')}.name={text(peer.workload)},"
            f"service.name={text(peer.canonical_service)},"
            f"service.version={text(peer.canonical_revision)},"
            f"app.name={text(peer.app)},app.version={text(peer.version)}")


@register(NAME)
class ConnectBaggageFactory(FilterFactory):
    def create(self, stream):
        if self.config.get("propagate"):
            return PropagateBaggageFilter(stream)
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


class PropagateBaggageFilter(StreamFilter):
    """`propagate: true`: the downstream peer known so far goes upstream as `baggage`."""

    __slots__ = ()

    def on_request_headers(self, request, end_stream: bool):
        peer = downstream_peer(self.stream, self)
        if peer is not None:
            request.headers.add("baggage", baggage_of(peer))    # added, as istio's addCopy
        return None


def downstream_peer(stream, before) -> Workload | None:
    """Istio's wasm.downstream_peer as a filter at `before` sees it: what a metadata exchange
    earlier in the stream read from the downstream, else what the connecting side shared with
    this internal connection (a terminated CONNECT's baggage); None when neither is known."""
    from ..internal_listener import peer_workload
    from .peer_metadata import PeerMetadataFilter
    for stream_filter in stream.filters:
        if stream_filter is before:
            break
        if isinstance(stream_filter, PeerMetadataFilter) and \
                stream_filter.downstream_peer is not None:
            return stream_filter.downstream_peer
    return peer_workload(stream.conn)


def baggage_peer(stream) -> Workload | None:
    """The peer the stream's connect_baggage read, or None (no filter, no header)."""
    for stream_filter in stream.filters:
        if isinstance(stream_filter, ConnectBaggageFilter):
            return stream_filter.peer
    return None

"""istio.alpn: the ALPN list a mesh connection offers upstream, by the upstream HTTP version
(istio/proxy's alpn filter; config: xds/http_filters_istio.py `_alpn`).

Istio's server sidecars pick their HTTP filter chains by these names (istio-http/1.0,
istio-http/1.1, istio-h2), so the client must offer them. Per request, the first version of
Envoy's ClusterInfo::upstreamHttpProtocol picks the list, as istio/proxy's filter does: the
downstream's with use_downstream_protocol_config (HTTP/1.1 for an HTTP/1.0 downstream: Envoy
has no HTTP/1.0 upstream), HTTP/2 for an HTTP/2 cluster and for one choosing by ALPN
(auto_config lists HTTP/2 first), else HTTP/1.1. That list becomes the request's application
protocols (worker/proxy/http/alpn_override.py), which the pool's TLS handshake offers instead
of the context's own; an auto_config pool still reads the protocol off the negotiated name.
"""

from __future__ import annotations

from ..http.alpn_override import APPLICATION_PROTOCOLS
from ..http.filter import FilterFactory, StreamFilter, register

NAME = "istio.alpn"


@register(NAME)
class AlpnFactory(FilterFactory):
    def __init__(self, config: dict, context):
        super().__init__(config, context)
        self.overrides = {version: tuple(names)
                          for version, names in config["overrides"].items() if names}

    def create(self, stream):
        if not self.overrides or stream.route is None or not stream.cluster_name:
            return None
        return AlpnFilter(stream, self.overrides)


class AlpnFilter(StreamFilter):
    __slots__ = ("overrides",)

    def __init__(self, stream, overrides: dict):
        super().__init__(stream)
        self.overrides = overrides

    def on_request_headers(self, request, end_stream: bool):
        stream = self.stream
        cluster = stream.worker.clusters.get(stream.cluster_name)
        if cluster is None:
            return None
        http2 = cluster.http2
        if http2 == "downstream":
            version = "HTTP2" if request.version == "2" else "HTTP11"
        else:
            version = "HTTP2" if http2 is True or http2 == "auto" else "HTTP11"
        names = self.overrides.get(version)
        if names:
            info = stream.info
            if info.dynamic_metadata is None:
                info.dynamic_metadata = {}
            info.dynamic_metadata[APPLICATION_PROTOCOLS] = names
        return None

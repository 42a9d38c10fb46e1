"""envoy.filters.http.grpc_stats: counts gRPC calls per upstream cluster, as Envoy names them.

    cluster.<cluster>.grpc.[<service>.<method>.]success / failure / total

A request is a gRPC call when its content-type is application/grpc (or application/grpc+...).
At the end of the stream its grpc-status (trailers, or the headers of a trailers-only
response) says success (0) or failure (anything else, or none: Envoy maps the HTTP status,
and only 200 with grpc-status 0 is a success). With stats_for_all_methods the service and
method of the :path (/package.Service/Method) are in the name. Calls without an upstream
cluster (a local reply before routing) count nowhere, as in Envoy. Message counts are not
kept (xds/http_filters_istio.py warns).
"""

from __future__ import annotations

from .filter import FilterFactory, StreamFilter, register


def is_grpc(request) -> bool:
    """A gRPC call: content-type application/grpc or application/grpc+..."""
    content_type = request.headers.get("content-type") if request is not None else None
    return bool(content_type) and (content_type == "application/grpc"
                                   or content_type.startswith("application/grpc+"))


def grpc_status(info) -> str | None:
    """The response's grpc-status: its trailers', else its headers' (trailers-only)."""
    status = None
    trailers = getattr(info, "response_trailers", None)
    if trailers is not None:
        status = trailers.get("grpc-status")
    if status is None and info.response is not None:
        status = info.response.headers.get("grpc-status")
    return status


@register("envoy.filters.http.grpc_stats")
class GrpcStatsFactory(FilterFactory):
    def create(self, stream):
        return GrpcStatsFilter(stream, self) if is_grpc(stream.request) else None


class GrpcStatsFilter(StreamFilter):
    __slots__ = ("factory",)

    def __init__(self, stream, factory):
        super().__init__(stream)
        self.factory = factory

    def on_log(self) -> None:
        info = self.stream.info
        cluster = info.upstream_cluster
        if not cluster:
            return
        prefix = f"cluster.{cluster}.grpc."
        if self.factory.config.get("per_method"):
            service, _, method = (info.request.path or "").lstrip("/").partition("/")
            if service and method:
                prefix += f"{service}.{method.split('?', 1)[0]}."
        ok = grpc_status(info) == "0" and info.response_code == 200
        counters = self.factory.context.stats.counters
        counters[prefix + ("success" if ok else "failure")] += 1
        counters[prefix + "total"] += 1

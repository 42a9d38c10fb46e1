"""A route chosen again after a filter cleared the route cache (Stream.clear_route_cache).

Baton picks the route before the filters (the fault filter's conditions and the filters'
per-route config read it); Envoy picks it lazily and a filter that changes what routing
reads clears it (clearRouteCache): the next filter that asks, in the end the router, gets a
route chosen on the request as it is then. So a stream whose cache a filter cleared gets
its route, route name, cluster and idle timeout chosen again once the filters are through,
before the router. Filters made before keep the per-route config of the first route (in
Envoy a filter after the clearing one would read the new route's); a stream no filter
clears pays one attribute test. Envoy's Wasm filter clears the cache on every change of the
request headers and on the foreign function clear_route_cache (worker/wasm/maps.py,
foreign.py), checked with Envoy 1.40 (tests/integration/test_differential_wasm_reroute.py).
"""

from __future__ import annotations

import random


def route_again(stream) -> None:
    stream.route_stale = False
    request = stream.request
    table = stream.hcm.routes
    route = table.route(request) if table is not None else None
    stream.route = route
    info = stream.info
    info.route_name = route.name if route is not None else ""
    stream.idle_timeout = route.idle_timeout if route is not None and route.idle_timeout_set \
        else stream.hcm.stream_idle_timeout
    cluster = None
    if route is not None and route.kind == "cluster":
        cluster = route.single_cluster or route.pick_cluster(request, random.random)
    stream.cluster_name = info.upstream_cluster = cluster

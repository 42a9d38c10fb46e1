"""A route chosen again after a filter cleared the route cache (Stream.clear_route_cache).

Baton picks the route before the filters (the fault filter's conditions and the filters'
per-route config read it); Envoy picks it lazily and a filter that changes what routing
reads clears it (clearRouteCache): the next filter that asks, in the end the router, gets a
route chosen on the request as it is then. So a stream whose cache a filter cleared gets
its route, route name, cluster and idle timeout chosen again once the filters are through,
before the router, and, before the next filter's headers, that filter and the ones after it
are made again by their factories (refilter): they read the new route's per-route config, as
Envoy's filters do when their decodeHeaders asks for the route (the buffer filter's
initConfig, the fault, CORS and local rate limit filters' resolveMostSpecificPerFilterConfig;
a factory that made no filter for the first route may make one now). The filters already
passed keep theirs. A stream no filter clears pays one attribute test a filter. Envoy's
Wasm filter clears the cache on every change of the request headers and on the foreign
function clear_route_cache (worker/wasm/maps.py, foreign.py), checked with Envoy 1.40
(tests/integration/test_differential_wasm_reroute.py).
"""

from __future__ import annotations

import random

from .body_filters import chain_for
from .filter import enabled_for


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


def refilter(stream) -> None:
    """The route chosen again before the filter at stream.filter_index gets the headers,
    and the filters from there on made again for it (by the factories after the one that
    made the last filter passed: the new route may turn one on or off)."""
    route_again(stream)
    factories = stream.hcm.filter_factories
    skipped = stream.skipped_factories or ()
    made_by = [f for f in factories if not any(f is s for s in skipped)]
    start = stream.filter_index
    first = factories.index(made_by[start - 1]) + 1 if start else 0
    skipped = stream.skipped_factories = [f for f in factories[:first] if f in skipped]
    fresh = []
    for factory in factories[first:]:
        # (MX: a filter the new route turns off, HttpFilter.disabled / FilterConfig, is not made)
        made = factory.create(stream) if enabled_for(factory, stream.route) else None
        if made is not None:
            fresh.append(made)
        else:
            skipped.append(factory)
    filters = stream.filters
    filters[start:] = fresh             # in place: the filter loop holds the list
    chain = stream.body_chain
    if chain is None:
        stream.body_chain = chain_for(stream, filters)
    else:
        chain.decodes = any(f.request_body_hooks for f in filters)
        chain.encodes = any(f.response_body_hooks for f in filters)

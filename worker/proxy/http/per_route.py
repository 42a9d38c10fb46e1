"""A filter's config on a route or virtual host (typed_per_filter_config), as the filters
that take it instead of their own read it (fault.py, local_ratelimit.py).

Route.per_filter (routing.py) is (the route's, its virtual host's) {filter name: config}, or
None; the name is the HCM entry's, as Envoy finds a per-filter config by the filter's config
name. The RouteConfiguration's typed_per_filter_config comes in its virtual hosts' entries
for the names they do not set (xds/http.py _inherit_per_filter).
"""

from __future__ import annotations


def per_route_config(route, name):
    """The most specific typed_per_filter_config entry named `name`: the route's, else its
    virtual host's (Route.per_filter), else None."""
    for level in route.per_filter:
        config = level.get(name)
        if config is not None:
            return config
    return None


def routes_carry(table, name) -> bool:
    """Whether a route or virtual host of `table` (a routing.RouteTable, or None) has a
    typed_per_filter_config entry named `name`."""
    for vhost in getattr(table, "virtual_hosts", None) or ():
        for route in vhost.routes:
            if route.per_filter is not None and per_route_config(route, name) is not None:
                return True
    return False

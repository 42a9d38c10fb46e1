"""envoy.filters.network.dubbo_proxy (DubboProxy v3) -> the plain config of a Dubbo chain.

    {"stat_prefix": str, "route_configs": [
        {"name", "interface", "group" (None: any), "version" (None: any),
         "routes": [{"method": string matcher, "params": {index: {"exact": str} or
                     {"range": [start, end]}}, "headers": [header matchers],
                     "cluster": name or None, "weighted_clusters": [{"name", "weight"}] or None}]}]}

Semantics are Envoy's (source/extensions/filters/network/dubbo_proxy/router/route_matcher.cc):
route configurations are tried in order, the first whose interface, group and version match
and that has a matching route wins. `interface` is exact, "*" (any non-empty), "*suffix" or
"prefix*"; an empty group or version matches any request. Within a configuration, routes are
tried in order: header matchers on the attachments (names lowercased, as Envoy's header map
does), then the method name, then the parameter matches. Either `route_config` (deprecated in
Envoy, still accepted) or `multiple_route_config` may be given.

Not supported (each a NACK naming its path): drds (route discovery), dubbo_filters other than
the router, protocol or serialization types other than Dubbo / Hessian2, metadata_match.
"""

from __future__ import annotations

from . import protos
from .http import _Context, _header_matcher, _string_matcher, _weighted_clusters
from .parse import join

DUBBO_PROXY_TYPE = "envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy"
ROUTER_FILTER = "envoy.filters.dubbo.router"


def translate_dubbo_proxy(any_pb, path, errors, warnings=None, clusters=None):
    """The typed_config Any of a dubbo_proxy filter -> chain config, or None on error."""
    pb = protos.message_class(DUBBO_PROXY_TYPE)()
    any_pb.Unpack(pb)
    return translate_dubbo_message(pb, path, errors, warnings, clusters)


def translate_dubbo_message(pb, path, errors, warnings=None, clusters=None):
    """A DubboProxy message -> chain config (also the route part of Baton's Bolt config,
    xds/bolt.py, which has the same shape)."""
    start = len(errors)
    ctx = _Context(errors, warnings, clusters, None)
    if not pb.stat_prefix:
        errors.append(f"{join(path, 'stat_prefix')}: required (a non-empty string)")
    if pb.protocol_type != 0:
        errors.append(f"{join(path, 'protocol_type')}: only Dubbo is supported")
    if pb.serialization_type != 0:
        errors.append(f"{join(path, 'serialization_type')}: only Hessian2 is supported")
    if pb.HasField("drds"):
        errors.append(f"{join(path, 'drds')}: not supported (route discovery); use "
                      "route_config or multiple_route_config")
    for i, filter_pb in enumerate(pb.dubbo_filters):
        if filter_pb.name != ROUTER_FILTER:
            errors.append(f"{join(path, 'dubbo_filters')}[{i}].name: {filter_pb.name!r} not "
                          f"supported (only {ROUTER_FILTER})")
    if pb.route_config and pb.HasField("multiple_route_config"):
        errors.append(f"{path}: route_config and multiple_route_config are both set")
    if pb.HasField("multiple_route_config"):
        where = join(join(path, "multiple_route_config"), "route_config")
        configs = pb.multiple_route_config.route_config
    else:
        where = join(path, "route_config")
        configs = pb.route_config
    route_configs = [_route_config(config, f"{where}[{i}]", ctx) for i, config in
                     enumerate(configs)]
    if len(errors) > start:
        return None
    return {"stat_prefix": pb.stat_prefix, "route_configs": route_configs}


def _route_config(pb, path, ctx):
    return {"name": pb.name, "interface": pb.interface, "group": pb.group or None,
            "version": pb.version or None,
            "routes": [_route(route, f"{join(path, 'routes')}[{i}]", ctx)
                       for i, route in enumerate(pb.routes)]}


def _route(pb, path, ctx):
    errors = ctx.errors
    match, action = pb.match, pb.route
    match_path, action_path = join(path, "match"), join(path, "route")
    method = None
    if not match.HasField("method") or not match.method.HasField("name"):
        errors.append(f"{join(match_path, 'method')}.name: required")
    else:
        method = _string_matcher(match.method.name, join(join(match_path, "method"), "name"), ctx)
    params = {}
    for index, spec in sorted(match.method.params_match.items()):
        which = spec.WhichOneof("parameter_match_specifier")
        if which == "range_match":
            params[index] = {"range": [spec.range_match.start, spec.range_match.end]}
        else:                               # exact_match; unset: Envoy matches any value
            params[index] = {"exact": spec.exact_match}
    headers = [_header_matcher(h, f"{join(match_path, 'headers')}[{i}]", ctx)
               for i, h in enumerate(match.headers)]
    cluster, weighted = None, None
    which = action.WhichOneof("cluster_specifier")
    if action.HasField("metadata_match"):
        errors.append(f"{join(action_path, 'metadata_match')}: not supported")
    if which == "cluster":
        cluster = action.cluster
        if ctx.clusters is not None and cluster not in ctx.clusters:
            errors.append(f"{join(action_path, 'cluster')}: unknown cluster '{cluster}'")
    elif which == "weighted_clusters":
        weighted = [{"name": c["name"], "weight": c["weight"]} for c in
                    _weighted_clusters(action.weighted_clusters,
                                       join(action_path, "weighted_clusters"), ctx)]
    else:
        errors.append(f"{action_path}: one of cluster or weighted_clusters is required")
    return {"method": method, "params": params, "headers": headers, "cluster": cluster,
            "weighted_clusters": weighted}


from .network_filters import register_terminal  # noqa: E402 - after the translator

register_terminal(DUBBO_PROXY_TYPE, "dubbo", translate_dubbo_proxy)

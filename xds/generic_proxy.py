"""envoy.filters.network.generic_proxy (GenericProxy v3) -> the plain config of an RPC chain.

    {"codec": "dubbo" | "bolt", "stat_prefix": str,
     "route_table": {"vhosts": [matcher], "exact": {host: index}, "suffixes": [[s, index]],
                     "prefixes": [[p, index]], "default": index or None},
     "access_log": [xds/http_filters.py translate_access_logs() entry],
     "local_rate_limit": {"max_tokens", "tokens_per_fill", "fill_interval"} or None}
    matcher:   {"list": [{"predicate": predicate, "on_match": on_match}]
                or "tree": {"input": input, "exact": {value: on_match}, "prefix": {...}},
                "on_no_match": on_match or None}
    on_match:  {"action": route} or {"matcher": matcher}
    predicate: {"single": {"input": input, "value": string matcher}}
               | {"single": {"request": {"host", "path", "method": string matcher or None,
                                         "properties": [[name, string matcher]]}}}
               | {"or": [predicate]} | {"and": [predicate]} | {"not": predicate}
    input:     {"kind": "service" | "host" | "path" | "method" | "property", "name": str}
    route:     {"cluster", "weighted_clusters", "timeout" (s), "retries" (tries again)}

The chain runs on the same RPC proxy as dubbo_proxy (worker/proxy/rpc/); generic.py there
evaluates this as Envoy's generic_proxy does. Codecs: Envoy's
envoy.generic_proxy.codecs.dubbo (DubboCodecConfig), and Baton's SOFA Bolt codec under its
own type URL, type.googleapis.com/baton.generic_proxy.codecs.bolt.v1.BoltCodecConfig (an
empty message, declared in xds/baton_types.py; also accepted inside a TypedStruct).

Filters: the router (envoy.filters.generic.router), last, and before it at most one of
Baton's local rate limit (type.googleapis.com/baton.generic_proxy.filters.local_ratelimit.v1
.LocalRateLimit {token_bucket}: requests beyond the bucket, per worker, get the codec's
"busy" local reply, Dubbo SERVER_THREADPOOL_EXHAUSTED and Bolt SERVER_THREADPOOL_BUSY, and
count in request_rate_limited).

Not supported (each a NACK naming its path): generic_rds, other filters, a router binding
upstream connections, tracing,
a matcher's custom_match other than generic_proxy's RequestMatcher, keep_matching,
per_filter_config. retry_policy fields other than num_retries are ignored with a warning
(Envoy's generic_proxy reads only num_retries).
"""

from __future__ import annotations

from . import protos
from .baton_types import BOLT_CODEC, LOCAL_RATELIMIT
from .http import _Context, _string_matcher, _weighted_clusters
from .http_filters import translate_access_logs
from .parse import join

GENERIC_PROXY_TYPE = "envoy.extensions.filters.network.generic_proxy.v3.GenericProxy"
DUBBO_CODEC = "envoy.extensions.filters.network.generic_proxy.codecs.dubbo.v3.DubboCodecConfig"
ROUTER = "envoy.extensions.filters.network.generic_proxy.router.v3.Router"
ROUTE_ACTION = "envoy.extensions.filters.network.generic_proxy.action.v3.RouteAction"
REQUEST_MATCHER = "envoy.extensions.filters.network.generic_proxy.matcher.v3.RequestMatcher"
_MATCHER_PACKAGE = "envoy.extensions.filters.network.generic_proxy.matcher.v3."
INPUTS = {_MATCHER_PACKAGE + name: kind for name, kind in (
    ("ServiceMatchInput", "service"), ("HostMatchInput", "host"), ("PathMatchInput", "path"),
    ("MethodMatchInput", "method"), ("PropertyMatchInput", "property"),
    ("RequestMatchInput", "request"))}
TYPED_STRUCTS = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")


def translate_generic_proxy(any_pb, path, errors, warnings=None, clusters=None):
    """The typed_config Any of a generic_proxy filter -> chain config, or None on error."""
    for name in (GENERIC_PROXY_TYPE, DUBBO_CODEC, ROUTER, ROUTE_ACTION, REQUEST_MATCHER):
        protos.import_type(name)
    pb = protos.message_class(GENERIC_PROXY_TYPE)()
    any_pb.Unpack(pb)
    start = len(errors)
    ctx = _Context(errors, warnings, clusters, None)
    if not pb.stat_prefix:
        errors.append(f"{join(path, 'stat_prefix')}: required (a non-empty string)")
    codec = _codec(pb, join(path, "codec_config"), errors)
    for field in ("generic_rds", "tracing"):
        if pb.HasField(field):
            errors.append(f"{join(path, field)}: not supported")
    access_log = _access_log(pb, join(path, "access_log"), errors, warnings)
    limit = _filters(pb, join(path, "filters"), errors)
    if not pb.HasField("route_config"):
        errors.append(f"{join(path, 'route_config')}: required (generic_rds is not supported)")
        return None
    table = _route_table(pb.route_config, join(path, "route_config"), ctx)
    if len(errors) > start:
        return None
    return {"codec": codec, "stat_prefix": pb.stat_prefix, "route_table": table,
            "access_log": access_log, "local_rate_limit": limit}


def _access_log(pb, path, errors, warnings):
    """AccessLog list -> translate_access_logs() entries, the formats checked against the
    generic_proxy operators (%METHOD%, %REQUEST_PROPERTY(k)%, ...) besides the common ones."""
    if not pb.access_log:
        return []
    # Imported late, as http_filters.py imports the formatter: only a chain that logs needs it.
    from ..worker.proxy.rpc.access_log import OPERATORS
    return translate_access_logs(pb.access_log, path, errors, warnings, OPERATORS)


def _codec(pb, path, errors):
    if not pb.HasField("codec_config") or not pb.codec_config.HasField("typed_config"):
        errors.append(f"{join(path, 'typed_config')}: required")
        return None
    any_pb = pb.codec_config.typed_config
    name = protos.type_name(any_pb.type_url)
    if name in TYPED_STRUCTS:
        struct = protos.message_class(name)()
        any_pb.Unpack(struct)
        name = protos.type_name(struct.type_url)
        if struct.HasField("value") and struct.value.fields:
            errors.append(f"{join(path, 'typed_config')}.value: {name} has no fields")
    if name == DUBBO_CODEC:
        return "dubbo"
    if name == BOLT_CODEC:
        return "bolt"
    errors.append(f"{join(path, 'typed_config')}: codec {name!r} not supported "
                  f"({DUBBO_CODEC} or {BOLT_CODEC})")
    return None


def _filters(pb, path, errors):
    """The router, last, as Envoy requires one terminal filter, and not bound; before it at
    most one local rate limit -> its token bucket or None."""
    if not pb.filters:
        errors.append(f"{path}: the router (envoy.filters.generic.router) is required")
    limit = None
    last = len(pb.filters) - 1
    for i, filter_pb in enumerate(pb.filters):
        here = f"{path}[{i}]"
        name = protos.type_name(filter_pb.typed_config.type_url)
        if name == LOCAL_RATELIMIT and i < last and limit is None:
            limit = _token_bucket(filter_pb.typed_config, join(here, "typed_config"), errors)
            continue
        if name != ROUTER or i < last:
            errors.append(f"{here}: {filter_pb.name!r} not supported here (the router, "
                          f"{ROUTER}, last; before it at most one {LOCAL_RATELIMIT})")
            continue
        router = protos.message_class(ROUTER)()
        filter_pb.typed_config.Unpack(router)
        if router.bind_upstream_connection:
            errors.append(f"{join(here, 'typed_config.bind_upstream_connection')}: not "
                          "supported (requests are multiplexed over shared upstream "
                          "connections)")
    return limit


def _token_bucket(any_pb, path, errors):
    """LocalRateLimit -> {max_tokens, tokens_per_fill, fill_interval (s)} as Envoy's
    TokenBucket reads: max_tokens > 0, tokens_per_fill 1 when unset, fill_interval > 0."""
    pb = protos.message_class(LOCAL_RATELIMIT)()
    any_pb.Unpack(pb)
    bucket = pb.token_bucket
    here = join(path, "token_bucket")
    interval = bucket.fill_interval.seconds + bucket.fill_interval.nanos / 1e9
    fill = bucket.tokens_per_fill.value if bucket.HasField("tokens_per_fill") else 1
    problems = [f"{join(here, name)}: must be > 0" for name, value in
                (("max_tokens", bucket.max_tokens), ("tokens_per_fill", fill),
                 ("fill_interval", interval)) if value <= 0]
    errors.extend(problems)
    if problems:
        return None
    return {"max_tokens": bucket.max_tokens, "tokens_per_fill": fill, "fill_interval": interval}


def _route_table(pb, path, ctx):
    vhosts, exact, suffixes, prefixes, default = [], {}, [], [], None
    seen = set()
    for i, vhost in enumerate(pb.virtual_hosts):
        here = f"{join(path, 'virtual_hosts')}[{i}]"
        vhosts.append(_matcher(vhost.routes, join(here, "routes"), ctx))
        for j, host in enumerate(vhost.hosts):
            where = f"{join(here, 'hosts')}[{j}]"
            if not host:
                ctx.errors.append(f"{where}: must not be empty")
            elif host in seen:
                ctx.errors.append(f"{where}: duplicate host {host!r}")
            elif host == "*":
                default = i
            elif host.startswith("*"):
                suffixes.append([host[1:], i])
            elif host.endswith("*"):
                prefixes.append([host[:-1], i])
            else:
                exact[host] = i
            seen.add(host)
    if pb.HasField("routes"):
        if default is not None:
            ctx.errors.append(f"{join(path, 'routes')}: cannot be given with a '*' virtual host")
        default = len(vhosts)
        vhosts.append(_matcher(pb.routes, join(path, "routes"), ctx))
    return {"vhosts": vhosts, "exact": exact, "suffixes": suffixes, "prefixes": prefixes,
            "default": default}


def _matcher(pb, path, ctx):
    which = pb.WhichOneof("matcher_type")
    result = {"on_no_match": _on_match(pb.on_no_match, join(path, "on_no_match"), ctx)
              if pb.HasField("on_no_match") else None}
    if which == "matcher_list":
        here = join(path, "matcher_list.matchers")
        result["list"] = [
            {"predicate": _predicate(m.predicate, f"{here}[{i}].predicate", ctx),
             "on_match": _on_match(m.on_match, f"{here}[{i}].on_match", ctx)}
            for i, m in enumerate(pb.matcher_list.matchers)]
    elif which == "matcher_tree":
        tree, here = pb.matcher_tree, join(path, "matcher_tree")
        kind = tree.WhichOneof("tree_type")
        if kind not in ("exact_match_map", "prefix_match_map"):
            ctx.errors.append(f"{here}: only exact_match_map and prefix_match_map are supported")
            return None
        entries = {key: _on_match(value, f"{join(here, kind)}.map[{key!r}]", ctx)
                   for key, value in getattr(tree, kind).map.items()}
        result["tree"] = {"input": _input(tree.input, join(here, "input"), ctx, plain=True),
                          "exact" if kind == "exact_match_map" else "prefix": entries}
    else:
        result["list"] = []                 # only on_no_match (or nothing: no route)
    return result


def _on_match(pb, path, ctx):
    if pb.keep_matching:
        ctx.errors.append(f"{join(path, 'keep_matching')}: not supported")
    which = pb.WhichOneof("on_match")
    if which == "matcher":
        return {"matcher": _matcher(pb.matcher, join(path, "matcher"), ctx)}
    if which != "action":
        ctx.errors.append(f"{path}: one of matcher or action is required")
        return None
    return {"action": _route_action(pb.action, join(path, "action"), ctx)}


def _input(pb, path, ctx, plain=False):
    """A TypedExtensionConfig naming one of generic_proxy's inputs -> {"kind", "name"}."""
    name = protos.type_name(pb.typed_config.type_url)
    kind = INPUTS.get(name)
    if kind is None or (plain and kind == "request"):
        ctx.errors.append(f"{join(path, 'typed_config')}: input {name!r} not supported "
                          "(generic_proxy's service, host, path, method, property"
                          f"{'' if plain else ' or request'} input)")
        return None
    result = {"kind": kind}
    if kind == "property":
        msg = protos.message_class(name)()
        pb.typed_config.Unpack(msg)
        if not msg.property_name:
            ctx.errors.append(f"{join(path, 'typed_config.property_name')}: required")
        result["name"] = msg.property_name
    return result


def _predicate(pb, path, ctx):
    which = pb.WhichOneof("match_type")
    if which in ("or_matcher", "and_matcher"):
        key = which.split("_")[0]
        return {key: [_predicate(p, f"{join(path, which)}.predicate[{i}]", ctx)
                      for i, p in enumerate(getattr(pb, which).predicate)]}
    if which == "not_matcher":
        return {"not": _predicate(pb.not_matcher, join(path, "not_matcher"), ctx)}
    if which != "single_predicate":
        ctx.errors.append(f"{path}: one of single_predicate, or_matcher, and_matcher or "
                          "not_matcher is required")
        return None
    single, here = pb.single_predicate, join(path, "single_predicate")
    source = _input(single.input, join(here, "input"), ctx)
    if source is None:
        return None
    if source["kind"] == "request":
        return {"single": {"request": _request_matcher(single, here, ctx)}}
    if single.WhichOneof("matcher") != "value_match":
        ctx.errors.append(f"{join(here, 'value_match')}: required for {source['kind']} input")
        return None
    return {"single": {"input": source, "value": _string_matcher(
        single.value_match, join(here, "value_match"), ctx)}}


def _request_matcher(single, path, ctx):
    """RequestMatchInput's custom_match: generic_proxy's RequestMatcher."""
    here = join(path, "custom_match")
    name = protos.type_name(single.custom_match.typed_config.type_url) \
        if single.WhichOneof("matcher") == "custom_match" else None
    if name != REQUEST_MATCHER:
        ctx.errors.append(f"{here}: the request input needs a {REQUEST_MATCHER}")
        return None
    msg = protos.message_class(REQUEST_MATCHER)()
    single.custom_match.typed_config.Unpack(msg)
    here = join(here, "typed_config")
    result = {field: _string_matcher(getattr(msg, field), join(here, field), ctx)
              if msg.HasField(field) else None for field in ("host", "path", "method")}
    result["properties"] = [
        [entry.name, _string_matcher(entry.string_match,
                                     f"{join(here, 'properties')}[{i}].string_match", ctx)]
        for i, entry in enumerate(msg.properties)]
    return result


def _route_action(pb, path, ctx):
    name = protos.type_name(pb.typed_config.type_url)
    if name != ROUTE_ACTION:
        ctx.errors.append(f"{join(path, 'typed_config')}: {name!r} is not {ROUTE_ACTION}")
        return None
    action = protos.message_class(ROUTE_ACTION)()
    pb.typed_config.Unpack(action)
    here = join(path, "typed_config")
    if action.per_filter_config:
        ctx.errors.append(f"{join(here, 'per_filter_config')}: not supported")
    cluster, weighted = None, None
    which = action.WhichOneof("cluster_specifier")
    if which == "cluster":
        cluster = action.cluster
        if ctx.clusters is not None and cluster not in ctx.clusters:
            ctx.errors.append(f"{join(here, 'cluster')}: unknown cluster '{cluster}'")
    elif which == "weighted_clusters":
        weighted = [{"name": c["name"], "weight": c["weight"]} for c in _weighted_clusters(
            action.weighted_clusters, join(here, "weighted_clusters"), ctx)]
    else:
        ctx.errors.append(f"{here}: one of cluster or weighted_clusters is required")
    timeout = action.timeout.ToTimedelta().total_seconds() if action.HasField("timeout") \
        else None
    tries = 1
    if action.HasField("retry_policy"):
        policy = action.retry_policy
        if policy.HasField("num_retries"):
            tries = policy.num_retries.value
        ignored = [f.name for f, _ in policy.ListFields() if f.name != "num_retries"]
        if ignored and ctx.warnings is not None:
            ctx.warnings.append(f"{join(here, 'retry_policy')}: {', '.join(ignored)} ignored "
                                "(generic_proxy reads only num_retries)")
    return {"cluster": cluster, "weighted_clusters": weighted,
            # Envoy: no timeout field is 15 s; 0 is none.
            "timeout": 15.0 if timeout is None else (timeout or None),
            # Envoy's num_retries counts every try (router.h, couldRetry): tries again = n - 1.
            "retries": max(tries - 1, 0)}


from .network_filters import register_terminal  # noqa: E402 - after the translator

register_terminal(GENERIC_PROXY_TYPE, "generic_proxy", translate_generic_proxy)

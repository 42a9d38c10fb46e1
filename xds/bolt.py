"""Baton's SOFA Bolt proxy config -> the plain config of a Bolt chain.

Envoy has no Bolt filter, so the config lives under Baton's own type URL, carried in a
TypedStruct (the way Envoy and Istio carry extension configs that are not in Envoy's API):

    - name: baton.filters.network.bolt_proxy
      typed_config:
        "@type": type.googleapis.com/xds.type.v3.TypedStruct
        type_url: type.googleapis.com/baton.filters.network.bolt_proxy.v1.BoltProxy
        value:
          stat_prefix: bolt_in
          route_config:
          - name: sofa
            interface: com.example.HelloService     # as DubboProxy's: exact, *, *suffix, prefix*
            version: "1.0"                          # empty or absent: any
            group: ""                               # SOFARPC's uniqueId; empty: any
            routes:
            - match:
                method: {name: {exact: sayHello}}
                headers: [{name: sofa_head_target_app, string_match: {exact: shop}}]
              route: {cluster: hello, timeout: 2s, retry_policy: {num_retries: 2},
                      hash_policy: {header: user_id}}

`stat_prefix` and `route_config` have DubboProxy's shape and semantics (xds/dubbo.py) and are
checked by the same code; a route may add `route.timeout` (a duration), after which the
request gets a local TIMEOUT reply (without it, the request's own Bolt timeout field applies);
`route.retry_policy.num_retries`, how many times a request whose upstream connect failed or
whose connection was reset is sent again (another host while there is one); and
`route.hash_policy.header`, the header a RING_HASH or MAGLEV cluster places requests by
(without it, the service). Beside route_config, `local_rate_limit: {max_tokens,
tokens_per_fill, fill_interval}` (Envoy's TokenBucket) admits requests at that rate per
worker; the others get a local SERVER_THREADPOOL_BUSY (`bolt.<stat_prefix>.request_rate_limited`).
A request's service ("interface:version[:uniqueId]") comes from the header
`sofa_head_target_service` or `service`, or from the SofaRequest in the content; its method
from `sofa_head_method_name` or the SofaRequest.
"""

from __future__ import annotations

from . import protos
from .dubbo import DUBBO_PROXY_TYPE, translate_dubbo_message
from .parse import join, parse_dict

BOLT_PROXY_TYPE = "baton.filters.network.bolt_proxy.v1.BoltProxy"
TYPED_STRUCTS = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")


def translate_bolt_proxy(any_pb, path, errors, warnings=None, clusters=None):
    """The typed_config Any (a TypedStruct naming BOLT_PROXY_TYPE) -> chain config or None."""
    struct = protos.message_class(protos.type_name(any_pb.type_url))()
    any_pb.Unpack(struct)
    if protos.type_name(struct.type_url) != BOLT_PROXY_TYPE:
        errors.append(f"{join(path, 'type_url')}: {struct.type_url!r} is not "
                      f"type.googleapis.com/{BOLT_PROXY_TYPE}")
        return None
    value = protos.json_format.MessageToDict(struct.value) if struct.HasField("value") else {}
    return translate_bolt_config(value, join(path, "value"), errors, warnings, clusters)


def translate_bolt_config(value: dict, path, errors, warnings=None, clusters=None):
    """The BoltProxy value (a dict) -> {"stat_prefix", "route_configs"} with each route's
    Baton-only "timeout" (seconds or None), "retries" and "hash_header"."""
    start = len(errors)
    for key in value:
        if key not in ("stat_prefix", "route_config", "statPrefix", "routeConfig",
                       "local_rate_limit", "localRateLimit"):
            errors.append(f"{join(path, key)}: not supported (stat_prefix, route_config, "
                          "local_rate_limit)")
    limit = value.get("local_rate_limit", value.get("localRateLimit"))
    if limit is not None:
        limit = _token_bucket(limit, join(path, "local_rate_limit"), errors)
    # Take the Baton-only route fields out before the rest is read as DubboProxy's shape.
    extras = []
    configs = value.get("route_config", value.get("routeConfig")) or []
    plain = {k: v for k, v in value.items() if k in ("stat_prefix", "statPrefix")}
    if isinstance(configs, list):
        plain["route_config"] = []
        for i, config in enumerate(configs):
            config = dict(config) if isinstance(config, dict) else config
            routes = []
            for j, route in enumerate((config or {}).get("routes") or []
                                      if isinstance(config, dict) else []):
                route = dict(route) if isinstance(route, dict) else route
                action = route.get("route") if isinstance(route, dict) else None
                extra = {"timeout": None, "retries": 0, "hash_header": None}
                if isinstance(action, dict):
                    action = dict(action)
                    where = f"{join(path, 'route_config')}[{i}].routes[{j}].route"
                    extra = _route_extras(action, where, errors)
                    route["route"] = action
                extras.append(extra)
                routes.append(route)
            if isinstance(config, dict):
                config["routes"] = routes
            plain["route_config"].append(config)
    else:
        plain["route_config"] = configs
    pb = protos.message_class(DUBBO_PROXY_TYPE)()
    parse_dict(plain, pb, path, errors)
    if len(errors) > start:
        return None
    config = translate_dubbo_message(pb, path, errors, warnings, clusters)
    if config is None:
        return None
    flat = iter(extras)
    for route_config in config["route_configs"]:
        for route in route_config["routes"]:
            route.update(next(flat))
    config["local_rate_limit"] = limit
    return config


def _token_bucket(spec, path, errors) -> dict | None:
    """{max_tokens, tokens_per_fill (default 1), fill_interval} as Envoy's TokenBucket."""
    if not isinstance(spec, dict) or set(spec) - {"max_tokens", "tokens_per_fill",
                                                  "fill_interval"}:
        errors.append(f"{path}: {spec!r} is not {{max_tokens, tokens_per_fill, fill_interval}}")
        return None
    counts = {}
    for name, default in (("max_tokens", None), ("tokens_per_fill", 1)):
        count = spec.get(name, default)
        if isinstance(count, float) and count.is_integer():     # a Struct's numbers
            count = int(count)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            errors.append(f"{join(path, name)}: {count!r} is not a whole number >= 1")
            return None
        counts[name] = count
    interval = _duration(spec.get("fill_interval"), join(path, "fill_interval"), errors)
    if interval is None:
        return None
    if interval < 0.05:
        errors.append(f"{join(path, 'fill_interval')}: must be >= 50ms (as Envoy's)")
        return None
    return {**counts, "fill_interval": interval}


def _route_extras(action: dict, path, errors) -> dict:
    """Pop the Baton-only fields of a route action: timeout, retry_policy, hash_policy."""
    extra = {"timeout": None, "retries": 0, "hash_header": None}
    if "timeout" in action:
        extra["timeout"] = _duration(action.pop("timeout"), join(path, "timeout"), errors)
    retry = action.pop("retry_policy", action.pop("retryPolicy", None))
    if retry is not None:
        count = retry.get("num_retries", retry.get("numRetries")) if isinstance(retry, dict) \
            else None
        # A TypedStruct's numbers are a Struct's: floats.
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        if not isinstance(retry, dict) or set(retry) - {"num_retries", "numRetries"} or \
                not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 10:
            errors.append(f"{join(path, 'retry_policy')}: {retry!r} is not "
                          "{num_retries: 0..10}")
        else:
            extra["retries"] = count
    hashing = action.pop("hash_policy", action.pop("hashPolicy", None))
    if hashing is not None:
        header = hashing.get("header") if isinstance(hashing, dict) else None
        if not isinstance(header, str) or not header or set(hashing) != {"header"}:
            errors.append(f"{join(path, 'hash_policy')}: {hashing!r} is not {{header: name}}")
        else:
            extra["hash_header"] = header.lower()       # header names are matched lowercased
    return extra


def _duration(text, path, errors):
    """A JSON duration ("1.5s") -> seconds, > 0."""
    if isinstance(text, str) and text.endswith("s"):
        try:
            seconds = float(text[:-1])
        except ValueError:
            seconds = None
        if seconds is not None and seconds > 0:
            return seconds
    errors.append(f"{path}: {text!r} is not a positive duration (\"2s\", \"0.5s\")")
    return None


from .network_filters import register_terminal  # noqa: E402 - after the translator

register_terminal(BOLT_PROXY_TYPE, "bolt", translate_bolt_proxy)

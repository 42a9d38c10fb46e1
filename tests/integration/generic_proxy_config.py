"""Envoy generic_proxy configs in JSON, for the unit, integration and differential tests."""

from __future__ import annotations

PREFIX = "type.googleapis.com/envoy.extensions.filters.network.generic_proxy."
GENERIC_PROXY = PREFIX + "v3.GenericProxy"
DUBBO_CODEC = PREFIX + "codecs.dubbo.v3.DubboCodecConfig"
BOLT_CODEC = "type.googleapis.com/baton.generic_proxy.codecs.bolt.v1.BoltCodecConfig"
INPUTS = {"service": "ServiceMatchInput", "host": "HostMatchInput", "path": "PathMatchInput",
          "method": "MethodMatchInput", "property": "PropertyMatchInput",
          "request": "RequestMatchInput"}


def generic_filter(route_config: dict | None, codec: str = "dubbo",
                   stat_prefix: str = "gp") -> dict:
    config = {"@type": GENERIC_PROXY, "stat_prefix": stat_prefix,
              "codec_config": {"name": f"envoy.generic_proxy.codecs.{codec}",
                               "typed_config": {"@type": DUBBO_CODEC if codec == "dubbo"
                                                else BOLT_CODEC}},
              "filters": [{"name": "envoy.filters.generic.router", "typed_config": {
                  "@type": PREFIX + "router.v3.Router"}}]}
    if route_config is not None:
        config["route_config"] = route_config
    return {"name": "envoy.filters.network.generic_proxy", "typed_config": config}


def input_(kind: str, name: str | None = None) -> dict:
    config = {"@type": PREFIX + "matcher.v3." + INPUTS[kind]}
    if name is not None:
        config["property_name"] = name
    return {"name": kind, "typed_config": config}


def single(source: dict, value: dict) -> dict:
    return {"single_predicate": {"input": source, "value_match": value}}


def request_predicate(**fields) -> dict:
    matcher = {k: v for k, v in fields.items() if k != "properties"}
    matcher["properties"] = [{"name": n, "string_match": m}
                             for n, m in fields.get("properties", ())]
    return {"single_predicate": {"input": input_("request"), "custom_match": {
        "name": "request", "typed_config": {"@type": PREFIX + "matcher.v3.RequestMatcher",
                                            **matcher}}}}


def action(cluster: str, **extra) -> dict:
    return {"action": {"name": "route", "typed_config": {
        "@type": PREFIX + "action.v3.RouteAction", "cluster": cluster, **extra}}}


def matcher_list(entries: list, on_no_match: dict | None = None) -> dict:
    result = {"matcher_list": {"matchers": [{"predicate": p, "on_match": m}
                                            for p, m in entries]}} if entries else {}
    if on_no_match is not None:
        result["on_no_match"] = on_no_match
    return result


def tree(source: dict, exact: dict | None = None, prefix: dict | None = None,
         on_no_match: dict | None = None) -> dict:
    body = {"input": source}
    if exact:
        body["exact_match_map"] = {"map": exact}
    if prefix:
        body["prefix_match_map"] = {"map": prefix}
    result = {"matcher_tree": body}
    if on_no_match is not None:
        result["on_no_match"] = on_no_match
    return result

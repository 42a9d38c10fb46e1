"""Builders for the Envoy v3 bootstraps the differential tests run through both proxies.

A test module writes its bootstrap as a template: a function of the listener ports and the admin
port. Envoy and Baton each get the template filled with their own ports; everything else
(routes, clusters, filters, the upstream ports) is identical.
"""

from __future__ import annotations

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
LOCAL_RATELIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"


def address(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def cluster(name: str, ports: list[int], connect_timeout: str = "1s", **extra) -> dict:
    """A STATIC cluster on 127.0.0.1 (no ports: a cluster with no endpoints at all)."""
    endpoints = [{"lb_endpoints": [{"endpoint": {"address": address(p)}} for p in ports]}] if ports else []
    return {"name": name, "type": "STATIC", "connect_timeout": connect_timeout, "lb_policy": "ROUND_ROBIN",
            "load_assignment": {"cluster_name": name, "endpoints": endpoints}, **extra}


def http_listener(name: str, port: int, route_config: dict, http_filters: list[dict] = (),
                  **hcm_extra) -> dict:
    hcm = {"@type": HCM_TYPE, "stat_prefix": name, "codec_type": "AUTO",
           "route_config": route_config, "http_filters": [*http_filters, ROUTER], **hcm_extra}
    return {"name": name, "address": address(port),
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def bootstrap(admin_port: int, listeners: list[dict], clusters: list[dict]) -> dict:
    return {"admin": {"address": address(admin_port)},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


def tag(route_name: str) -> list[dict]:
    """request_headers_to_add that names the route in the request the upstream receives."""
    return [{"header": {"key": "x-route", "value": route_name},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]


def percent(n: int) -> dict:
    return {"numerator": n, "denominator": "HUNDRED"}
